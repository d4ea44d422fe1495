from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from callgate.config import Settings
from callgate.engines.base import (
    AudioDelta,
    EngineError,
    EngineEvent,
    ResponseDone,
    ResponseRequest,
    Stage,
    TextDelta,
    ToolCall,
    TranscriptDone,
)
from callgate.engines.local import UNAVAILABLE_SPEECH, LocalEngine
from callgate.engines.stt import WhisperTranscriber

from .audio import espeak, seconds, words
from .peer import PeerState, Reply, closed_port_url

pytestmark = pytest.mark.slow

QUESTION: list[dict[str, Any]] = [
    {"type": "message", "role": "user",
     "content": [{"type": "input_audio", "transcript": "what is the weather like today"}]}]
ANSWER = ["Sure", ",", " the weather", " today", " is sunny", ".", " Take", " a hat", "."]


def _request(**kwargs: Any) -> ResponseRequest:
    return ResponseRequest("You are a friendly phone agent.", QUESTION, **kwargs)


async def _respond(engine: LocalEngine, request: ResponseRequest) -> list[EngineEvent]:
    await engine.start({})  # loads the models, as a session does before the first turn
    try:
        return [event async for event in engine.respond(request)]
    finally:
        await engine.aclose()


def _audio(events: list[EngineEvent]) -> bytes:
    return b"".join(e.pcm for e in events if isinstance(e, AudioDelta))


def _stages(events: list[EngineEvent]) -> dict[str, float]:
    return {e.name: e.at for e in events if isinstance(e, Stage)}


def _hear(pcm: bytes) -> set[str]:
    async def main() -> str:
        return [i async for i in WhisperTranscriber().transcribe(pcm)][-1].text

    return words(asyncio.run(main()))


def test_a_spoken_answer_streams_clause_by_clause(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    # The model pauses once its first sentence is out (the space after the dot comes with
    # " Take"): speech must start during the pause, not wait for the rest.
    state.replies.append(Reply(ANSWER, delay=0.01, pause_after={7: 2.0}))
    engine = LocalEngine(Settings(llm_base_url=url, llm_model="peer-model"))
    events = asyncio.run(_respond(engine, _request()))

    sent = state.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "You are a friendly phone agent."}
    assert sent["messages"][1] == {"role": "user", "content": "what is the weather like today"}

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(ANSWER)
    stages = _stages(events)
    assert stages["llm_first_token"] < stages["tts_first_audio"]
    assert state.last_piece_sent_at is not None
    assert stages["tts_first_audio"] < state.last_piece_sent_at - 1.0
    # Transcript text comes before the audio it describes.
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioDelta))
    assert first_text < first_audio
    assert events[-1] == ResponseDone("completed", None, {"input_tokens": 11,
                                                          "output_tokens": len(ANSWER),
                                                          "total_tokens": 11 + len(ANSWER)})
    pcm = _audio(events)
    assert 2.0 < seconds(pcm) < 8.0
    assert max(len(e.pcm) for e in events if isinstance(e, AudioDelta)) <= 9600
    # Whisper tiny hears each clause as synthesised; how the clauses split depends on when
    # the pieces arrived, and on a loaded machine one word can come back misheard.
    heard = _hear(pcm)
    assert len({"weather", "sunny", "hat"} & heard) >= 2, heard


def test_closing_the_response_stops_the_llm_and_speech(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(["Let me tell you a long story. "] * 40, delay=0.1))

    async def main() -> float:
        engine = LocalEngine(Settings(llm_base_url=url, llm_model="peer-model"))
        stream = engine.respond(_request())
        async for event in stream:
            if isinstance(event, AudioDelta):
                break
        started = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        elapsed = time.monotonic() - started
        await engine.aclose()
        return elapsed

    assert asyncio.run(main()) < 0.5  # not waiting for the 4 s the answer would take
    deadline = time.monotonic() + 2
    while state.stream_closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.stream_closed_at is not None, "the server never saw the stream closed"
    assert not state.stream_completed


def _check_spoken_explanation(events: list[EngineEvent], message_part: str) -> None:
    errors = [e for e in events if isinstance(e, EngineError)]
    assert errors and errors[0].code == "llm_unavailable" and message_part in errors[0].message
    assert [e.text for e in events if isinstance(e, TextDelta)] == [UNAVAILABLE_SPEECH]
    assert events[-1] == ResponseDone(status="failed", reason="llm_unavailable")
    pcm = _audio(events)
    assert seconds(pcm) > 1.5
    assert {"sorry", "language", "model"} <= _hear(pcm)


def test_with_no_language_model_the_caller_hears_why() -> None:
    events = asyncio.run(_respond(LocalEngine(Settings(llm_bundled=False)), _request()))
    _check_spoken_explanation(events, "CALLGATE_LLM_BASE_URL")


def test_a_language_model_server_that_is_down_is_explained() -> None:
    engine = LocalEngine(Settings(llm_base_url=closed_port_url(), llm_model="m"))
    events = asyncio.run(_respond(engine, _request()))
    _check_spoken_explanation(events, "cannot reach")


def test_transcribe_stamps_the_transcript() -> None:
    pcm = espeak("what is the weather like today", 24000)

    async def main() -> list[object]:
        engine = LocalEngine(Settings())
        await engine.start({})
        try:
            return [e async for e in engine.transcribe(pcm)]
        finally:
            await engine.aclose()

    events = asyncio.run(main())
    assert isinstance(events[-2], Stage) and events[-2].name == "transcript_ready"
    assert isinstance(events[-1], TranscriptDone)
    assert {"weather", "today"} <= words(events[-1].text)


def test_text_only_tool_calls_and_token_limits(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies += [
        Reply(["Hello", " there."]),
        Reply([], tool_calls=[{"id": "c1", "name": "get_weather", "arguments": "{}"}]),
        Reply(["Cut"], finish_reason="length"),
    ]
    settings = Settings(llm_base_url=url, llm_model="peer-model")

    text = asyncio.run(_respond(LocalEngine(settings), _request(output_modalities=("text",))))
    assert [e for e in text if isinstance(e, TextDelta)] == [TextDelta("Hello"),
                                                             TextDelta(" there.")]
    assert not _audio(text) and "tts_first_audio" not in _stages(text)

    tool = asyncio.run(_respond(LocalEngine(settings), _request()))
    assert ToolCall("c1", "get_weather", "{}") in tool
    assert isinstance(tool[-1], ResponseDone) and tool[-1].status == "completed"

    cut = asyncio.run(_respond(LocalEngine(settings), _request(max_output_tokens=1)))
    assert state.requests[-1]["max_tokens"] == 1
    assert isinstance(cut[-1], ResponseDone)
    assert (cut[-1].status, cut[-1].reason) == ("incomplete", "max_output_tokens")


def test_a_speech_failure_is_reported(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(["Hello", " there."]))
    engine = LocalEngine(Settings(llm_base_url=url, llm_model="m",
                                  tts_voice="/nonexistent/voice.onnx"))
    events = asyncio.run(_respond(engine, _request()))
    assert any(isinstance(e, EngineError) and e.code == "tts_failed" for e in events)
    assert events[-1] == ResponseDone(status="failed", reason="tts_failed")
