from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callgate.config import ModelRoute, Settings
from callgate.engines.base import (
    AudioDelta,
    EngineError,
    ResponseDone,
    ResponseRequest,
    Stage,
    TextDelta,
    TranscriptDone,
)
from callgate.engines.llm import ChatCompletionsClient
from callgate.engines.openai_compat import (
    HttpSpeech,
    HttpTranscriber,
    OpenAICompatEngine,
    compat_stages,
)
from callgate.engines.stt import WhisperTranscriber
from callgate.engines.tts import PiperSpeech

from .audio import espeak, seconds, words
from .peer import PeerState, Reply, closed_port_url

pytestmark = pytest.mark.slow


def _route(url: str, **kwargs: str) -> ModelRoute:
    return ModelRoute(engine="openai-compatible", url=url, api_key="sk-x", **kwargs)


def test_every_stage_over_http(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(["It is sunny", " in Paris", " today."]))
    route = _route(url, stt_model="whisper-small", llm_model="chat-x", tts_model="tts-x",
                   tts_voice="joe")
    question = espeak("what is the weather like today", 24000)

    async def main() -> tuple[list[Any], list[Any]]:
        engine = OpenAICompatEngine(Settings(), route)
        await engine.start({})
        try:
            heard = [e async for e in engine.transcribe(question)]
            done = heard[-1]
            assert isinstance(done, TranscriptDone)
            conversation = [{"type": "message", "role": "user",
                             "content": [{"type": "input_audio", "transcript": done.text}]}]
            said = [e async for e in engine.respond(ResponseRequest("Be brief.", conversation,
                                                                    voice="alloy"))]
            return heard, said
        finally:
            await engine.aclose()

    heard, said = asyncio.run(main())
    assert isinstance(heard[-2], Stage) and heard[-2].name == "transcript_ready"
    assert {"weather", "today"} <= words(heard[-1].text)
    assert state.transcriptions == [{"model": "whisper-small", "response_format": "json"}]

    assert state.requests[0]["model"] == "chat-x"
    assert "weather" in state.requests[0]["messages"][1]["content"]
    assert "".join(e.text for e in said if isinstance(e, TextDelta)) == \
        "It is sunny in Paris today."
    # Spoken in pieces (the first ends after four words); the route's voice wins for each.
    assert [r["input"] for r in state.speech_requests] == ["It is sunny in", "Paris today."]
    assert {r["voice"] for r in state.speech_requests} == {"joe"}
    assert state.speech_requests[0]["response_format"] == "pcm"
    assert state.speech_requests[0]["model"] == "tts-x"
    pcm = b"".join(e.pcm for e in said if isinstance(e, AudioDelta))
    assert all(len(e.pcm) % 2 == 0 for e in said if isinstance(e, AudioDelta))
    assert 1.0 < seconds(pcm) < 5.0
    assert isinstance(said[-1], ResponseDone) and said[-1].status == "completed"


def test_stages_without_a_url_run_embedded() -> None:
    stt, llm, tts = compat_stages(Settings(), ModelRoute(engine="openai-compatible",
                                                         llm_base_url="http://h/v1"))
    assert isinstance(stt, WhisperTranscriber) and isinstance(tts, PiperSpeech)
    assert isinstance(llm, ChatCompletionsClient)
    stt2, _, tts2 = compat_stages(Settings(), _route("http://h/v1", stt_base_url="http://s/v1"))
    assert isinstance(stt2, HttpTranscriber) and isinstance(tts2, HttpSpeech)


def test_a_speech_server_that_is_down_is_reported(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(["Hello."]))
    route = ModelRoute(engine="openai-compatible", llm_base_url=url, llm_model="m",
                       tts_base_url=closed_port_url(), stt_base_url=closed_port_url())

    async def main() -> tuple[list[Any], list[Any]]:
        engine = OpenAICompatEngine(Settings(), route)
        try:
            heard = [e async for e in engine.transcribe(bytes(4800))]
            said = [e async for e in engine.respond(ResponseRequest("", []))]
            return heard, said
        finally:
            await engine.aclose()

    heard, said = asyncio.run(main())
    assert isinstance(heard[-1], EngineError) and "transcription failed" in heard[-1].message
    errors = [e for e in said if isinstance(e, EngineError)]
    assert errors[0].code == "tts_failed" and "speech server" in errors[0].message
    assert said[-1] == ResponseDone(status="failed", reason="tts_failed")
