"""Barge-in: speech over the assistant clears the line, cancels and truncates the response."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from callgate.engines.base import AudioDelta, ResponseDone, TextDelta
from callgate.realtime.session import RealtimeSession

from .doubles import (
    EnergyVad,
    FakeLine,
    Gate,
    ManualClock,
    ScriptedEngine,
    Watcher,
    frames,
    silence,
    tone,
)

pytestmark = pytest.mark.anyio

VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
       "silence_duration_ms": 500}
WORDS = "one two three four five six seven eight"


async def call_session(engine: ScriptedEngine, turn: dict[str, Any] | None = None,
                       ) -> tuple[RealtimeSession, Watcher, FakeLine, ManualClock]:
    clock = ManualClock()
    line = FakeLine(clock)
    session = RealtimeSession(config={"audio": {"input": {"turn_detection": turn or VAD}}},
                              engine=engine, call_id="rtc_barge", output=line,
                              vad=EnergyVad(), clock=clock)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    return session, watcher, line, clock


def speak_until_started(session: RealtimeSession, line: FakeLine) -> int:
    """Feed speech frame by frame; the line must be cleared in the frame that detects it."""
    for index, frame in enumerate(frames(tone(300))):
        session.feed_audio(frame)
        if line.clears:
            return index
    raise AssertionError("speech never detected")


async def test_barge_in_during_a_response() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta(WORDS), AudioDelta(tone(2000, 3000)),
                                      Gate(gate), TextDelta(" nine"), ResponseDone()]])
    session, watcher, line, clock = await call_session(engine)
    await session.handle_client_event('{"type": "response.create"}')
    started, _ = await watcher.until("output_audio_buffer.started")
    await asyncio.sleep(0.01)
    clock.advance(0.5)  # the caller has heard 500 ms of the 2000 ms sent
    frame_index = speak_until_started(session, line)
    assert frame_index <= 2  # one 32 ms VAD frame of speech is enough
    assert line.clears == [1500]
    events = watcher.pending()
    kinds = Watcher.types(events)
    assert kinds[:3] == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared",
                         "conversation.item.truncated"]
    truncated = events[2]
    assert truncated["audio_end_ms"] == 500 and truncated["content_index"] == 0
    assert events[1]["response_id"] == started["response_id"]
    done = events[-1]
    assert done["type"] == "response.done"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    item = done["response"]["output"][0]
    assert item["status"] == "incomplete" and item["id"] == truncated["item_id"]
    # 500 of 2000 ms heard: a quarter of the words stay in context.
    assert item["content"][0]["transcript"] == "one two"
    stored = session.conversation.get(item["id"])
    assert stored is not None and stored["content"][0]["transcript"] == "one two"
    assert "output_audio_buffer.stopped" not in kinds
    gate.set()
    await asyncio.sleep(0.01)
    assert "response.output_audio_transcript.delta" not in Watcher.types(watcher.pending())
    # The caller's turn ends and is answered with the truncated history.
    for frame in frames(tone(300) + silence(700)):
        session.feed_audio(frame)
    await watcher.until("response.done")
    history = engine.requests[1].conversation
    assert history[0]["content"][0]["transcript"] == "one two"
    assert history[1]["role"] == "user"


async def test_barge_in_after_response_done_while_audio_still_plays() -> None:
    engine = ScriptedEngine(replies=[[TextDelta(WORDS), AudioDelta(tone(1000, 3000)),
                                      ResponseDone()]])
    session, watcher, line, clock = await call_session(engine)
    await session.handle_client_event('{"type": "response.create"}')
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"
    clock.advance(0.3)
    speak_until_started(session, line)
    kinds = Watcher.types(events := watcher.pending())
    assert kinds == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared",
                     "conversation.item.truncated"]
    assert events[2]["audio_end_ms"] == 300
    assert line.clears == [700]


async def test_truncation_spans_two_queued_responses() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("first answer"), AudioDelta(tone(1000, 3000)),
                                      ResponseDone()],
                                     [TextDelta("second answer"), AudioDelta(tone(1000, 3000)),
                                      ResponseDone()]])
    session, watcher, line, clock = await call_session(engine)
    await session.handle_client_event('{"type": "response.create"}')
    first, _ = await watcher.until("response.done")
    await session.handle_client_event('{"type": "response.create"}')
    second, _ = await watcher.until("response.done")
    clock.advance(0.5)  # 500 ms of the first answer played; 1500 ms still queued
    speak_until_started(session, line)
    truncated = {e["item_id"]: e["audio_end_ms"] for e in watcher.pending()
                 if e["type"] == "conversation.item.truncated"}
    assert truncated == {first["response"]["output"][0]["id"]: 500,
                         second["response"]["output"][0]["id"]: 0}


async def test_client_clears_the_output_buffer() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta(WORDS), AudioDelta(tone(1000, 3000)),
                                      Gate(gate), ResponseDone()]])
    session, watcher, _line, clock = await call_session(engine)
    await session.handle_client_event('{"type": "response.create"}')
    await watcher.until("output_audio_buffer.started")
    clock.advance(0.25)
    await session.handle_client_event('{"type": "output_audio_buffer.clear"}')
    kinds = Watcher.types(events := watcher.pending())
    assert kinds[:2] == ["output_audio_buffer.cleared", "conversation.item.truncated"]
    assert events[1]["audio_end_ms"] == 250
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    # Nothing left to clear: still acknowledged.
    await session.handle_client_event('{"type": "output_audio_buffer.clear"}')
    assert Watcher.types(watcher.pending()) == ["output_audio_buffer.cleared"]


async def test_interrupt_response_false_keeps_talking() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta(WORDS), AudioDelta(tone(1000, 3000)),
                                      Gate(gate), ResponseDone()]])
    session, watcher, line, _clock = await call_session(
        engine, {**VAD, "interrupt_response": False})
    await session.handle_client_event('{"type": "response.create"}')
    await watcher.until("output_audio_buffer.started")
    for frame in frames(tone(300) + silence(700)):
        session.feed_audio(frame)
    kinds = Watcher.types(watcher.pending())
    assert "input_audio_buffer.speech_started" in kinds
    assert "input_audio_buffer.committed" in kinds
    assert "output_audio_buffer.cleared" not in kinds and "response.done" not in kinds
    assert line.clears == []
    gate.set()
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"
    assert len(engine.requests) == 1  # no second response while one was active


async def test_standalone_barge_in_leaves_truncation_to_the_client() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta(WORDS), AudioDelta(tone(1000, 3000)),
                                      Gate(gate)]])
    session = RealtimeSession(config={"audio": {"input": {"turn_detection": VAD}}},
                              engine=engine, vad=EnergyVad())
    await session.start()
    watcher = Watcher(session)
    await session.handle_client_event('{"type": "response.create"}')
    delta, _ = await watcher.until("response.output_audio.delta")
    for frame in frames(tone(200)):
        session.feed_audio(frame)
    done, events = await watcher.until("response.done")
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert "conversation.item.truncated" not in Watcher.types(events)
    item_id = delta["item_id"]
    await session.handle_client_event(json.dumps(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
         "audio_end_ms": 5000, "event_id": "evt_t"}), watcher.sub)
    error, _ = await watcher.until("error")
    assert error["error"]["param"] == "audio_end_ms" and error["error"]["event_id"] == "evt_t"
    await session.handle_client_event(json.dumps(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
         "audio_end_ms": 500}))
    truncated, _ = await watcher.until("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 500
    stored = session.conversation.get(item_id)
    assert stored is not None and stored["content"][0]["transcript"] == "one two three four"
    await session.handle_client_event('{"type": "output_audio_buffer.clear"}', watcher.sub)
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "unsupported_for_session"
