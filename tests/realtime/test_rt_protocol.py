"""Client event validation, conversation item operations and fan-out limits."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import soxr

from callgate.engines.base import RelayedEvent
from callgate.engines.echo import EchoEngine
from callgate.media.g711 import alaw_decode, ulaw_encode
from callgate.realtime.protocol import (
    CLIENT_EVENT_MODELS,
    MAX_EVENT_BYTES,
    ProtocolError,
    parse_client_event,
    validate_session,
)
from callgate.realtime.session import RealtimeSession
from callgate.realtime.subscribers import Subscription

from .doubles import FakeLine, ScriptedEngine, Watcher, check_server_event, silence, tone


def error_of(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw)
    check_server_event(info.value.to_event())
    return info.value


def test_all_eleven_ga_client_events_are_known() -> None:
    assert sorted(CLIENT_EVENT_MODELS) == sorted([
        "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
        "input_audio_buffer.clear", "output_audio_buffer.clear", "conversation.item.create",
        "conversation.item.retrieve", "conversation.item.truncate", "conversation.item.delete",
        "response.create", "response.cancel"])


def test_valid_events_keep_only_what_the_client_set() -> None:
    ev = parse_client_event(json.dumps({
        "type": "session.update", "event_id": "evt_1",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}},
                    "tools": [{"type": "function", "name": "f", "parameters": {}}]}}))
    assert ev.event_id == "evt_1"
    assert ev.data["session"] == {"type": "realtime",
                                  "audio": {"input": {"turn_detection": None}},
                                  "tools": [{"type": "function", "name": "f",
                                             "parameters": {}}]}
    assert parse_client_event(b'{"type": "response.cancel"}').data == {
        "type": "response.cancel"}


@pytest.mark.parametrize(("raw", "code", "param"), [
    ("{nope", "invalid_json", None),
    ('{"type": "response.cancel"}'.encode("utf-16"), "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ('{"event_id": "e"}', "missing_required_parameter", "type"),
    ('{"type": 7}', "missing_required_parameter", "type"),
    ('{"type": "session.update", "event_id": 5}', "invalid_type", "event_id"),
    ('{"type": "response.audio.delta"}', "invalid_value", "type"),
    ('{"type": "session.update", "session": {}}', "missing_required_parameter",
     "session.type"),
    ('{"type": "session.update", "session": {"type": "realtime", "voice": "alloy"}}',
     "unknown_parameter", "session.voice"),
    ('{"type": "session.update", "session": {"type": "realtime", "max_output_tokens": "5"}}',
     "invalid_type", "session.max_output_tokens"),
    ('{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
     '{"turn_detection": {"type": "server_vad", "threshold": "high"}}}}}', "invalid_type",
     "session.audio.input.turn_detection.threshold"),
    ('{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
     '{"format": {"type": "audio/pcm", "rate": 16000}}}}}', "invalid_value",
     "session.audio.input.format.rate"),
    ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
     '"content": [{"type": "input_txt", "text": "x"}]}}', "invalid_value",
     "item.content[0].type"),
    ('{"type": "conversation.item.create", "item": {"type": "function_call_output", '
     '"output": "x"}}', "missing_required_parameter", "item.call_id"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, '
     '"audio_end_ms": "10"}', "invalid_type", "audio_end_ms"),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "response.create", "response": {"input": [{"type": "item_reference"}]}}',
     "missing_required_parameter", "response.input[0].id"),
])
def test_invalid_events_name_the_param(raw: str | bytes, code: str, param: str | None) -> None:
    err = error_of(raw)
    assert (err.code, err.param) == (code, param), err.message


def test_oversized_event() -> None:
    err = error_of('{"type": "input_audio_buffer.append", "audio": "' +
                   "A" * MAX_EVENT_BYTES + '"}')
    assert err.code == "event_too_large"


def test_error_carries_the_event_id() -> None:
    err = error_of('{"type": "response.cancel", "event_id": "evt_x", "response_id": 3}')
    assert err.event_id == "evt_x" and err.param == "response_id"
    ev = err.to_event()
    assert ev["error"]["event_id"] == "evt_x" and ev["error"]["type"] == "invalid_request_error"


def test_validate_session_for_accept() -> None:
    assert validate_session({"type": "realtime", "instructions": "x"})["instructions"] == "x"
    with pytest.raises(ProtocolError) as info:
        validate_session({"type": "realtime", "audio": {"output": {"speed": "fast"}}})
    assert info.value.param == "session.audio.output.speed"


@pytest.mark.anyio
async def test_session_level_checks() -> None:
    with pytest.raises(ProtocolError):
        RealtimeSession(config={"instructions": 3}, engine=ScriptedEngine())
    session = RealtimeSession(config={}, engine=ScriptedEngine())
    watcher = Watcher(session)
    await watcher.next()
    for update, param in [
        ({"type": "transcription"}, "session.type"),
        ({"type": "realtime", "output_modalities": ["audio", "text"]},
         "session.output_modalities"),
        ({"type": "realtime", "audio": {"output": {"speed": 3.0}}},
         "session.audio.output.speed"),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm",
                                                             "rate": 16000}}}},
         "session.audio.input.format.rate"),
        ({"type": "realtime", "max_output_tokens": 5000}, "session.max_output_tokens"),
    ]:
        await session.handle_client_event(json.dumps({"type": "session.update",
                                                      "session": update}), watcher.sub)
        error, _ = await watcher.until("error")
        assert error["error"]["param"] == param
    # A call session reports whatever format SDP negotiated (G.711 is fine there).
    call = RealtimeSession(config={"audio": {"output": {"format": {"type": "audio/pcmu"}}}},
                           engine=ScriptedEngine(), call_id="rtc_f", output=FakeLine())
    assert call.config["audio"]["output"]["format"] == {"type": "audio/pcmu"}


@pytest.mark.anyio
async def test_item_operations() -> None:
    session = RealtimeSession(config={"audio": {"input": {"turn_detection": None}}},
                              engine=ScriptedEngine(transcripts=["spoken words"]))
    await session.start()
    watcher = Watcher(session)
    await watcher.next()

    async def send(**event: Any) -> None:
        await session.handle_client_event(json.dumps(event), watcher.sub)

    def text_item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": item_id}]}

    await send(type="conversation.item.create", item=text_item("item_b"))
    await watcher.until("conversation.item.added")
    await send(type="conversation.item.create", item=text_item("item_a"),
               previous_item_id="root")
    added, _ = await watcher.until("conversation.item.added")
    assert added["previous_item_id"] is None
    await send(type="conversation.item.create", item=text_item("item_c"),
               previous_item_id="item_a")
    added, _ = await watcher.until("conversation.item.added")
    assert added["previous_item_id"] == "item_a"
    assert [i["id"] for i in session.conversation.items()] == ["item_a", "item_c", "item_b"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "conversation.item.create", "item": text_item("item_a")},
         "item_id_already_exists"),
        ({"type": "conversation.item.create", "item": text_item("item_d"),
          "previous_item_id": "item_zz"}, "previous_item_id_invalid"),
        ({"type": "conversation.item.retrieve", "item_id": "item_zz"},
         "item_retrieve_invalid_item_id"),
        ({"type": "conversation.item.delete", "item_id": "item_zz"},
         "item_delete_invalid_item_id"),
        ({"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0,
          "audio_end_ms": 0}, "item_truncate_invalid_content_index"),
        ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_value"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
         "invalid_value"),
    ]
    for event, code in cases:
        await send(**event)
        error, _ = await watcher.until("error")
        assert error["error"]["code"] == code, event
    await send(type="conversation.item.delete", item_id="item_c")
    deleted, _ = await watcher.until("conversation.item.deleted")
    assert deleted["item_id"] == "item_c"

    # Audio committed by the client can be retrieved with its transcript.
    await send(type="input_audio_buffer.append",
               audio=base64.b64encode(tone(300) + silence(100)).decode())
    await send(type="input_audio_buffer.commit")
    committed, _ = await watcher.until("input_audio_buffer.committed")
    assert committed["previous_item_id"] == "item_b"
    await watcher.until("conversation.item.input_audio_transcription.completed")
    await send(type="conversation.item.retrieve", item_id=committed["item_id"])
    retrieved, _ = await watcher.until("conversation.item.retrieved")
    part = retrieved["item"]["content"][0]
    assert part["transcript"] == "spoken words"
    assert base64.b64decode(part["audio"]) == tone(300) + silence(100)

    # A client-created audio item is transcribed for the model, too.
    await send(type="conversation.item.create", item={
        "type": "message", "role": "user",
        "content": [{"type": "input_audio", "audio": base64.b64encode(tone(200)).decode()}]})
    added, _ = await watcher.until("conversation.item.added")
    assert "audio" not in added["item"]["content"][0]
    completed, _ = await watcher.until("conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == added["item"]["id"]


@pytest.mark.anyio
async def test_a_slow_subscriber_is_cut_off_not_waited_for() -> None:
    closed: list[Subscription] = []
    sub = Subscription(closed.append, maxsize=3)
    for n in range(3):
        sub.put({"type": "x", "n": n})
    assert not sub.closed
    sub.put({"type": "x", "n": 3})
    assert sub.closed and sub.overflowed and closed == [sub]
    assert [ev async for ev in sub] == []
    normal = Subscription(closed.append)
    normal.put({"type": "y"})
    normal.close()
    assert [ev async for ev in normal] == [{"type": "y"}]  # queued events survive close


@pytest.mark.anyio
async def test_duplex_echo_engine_call_and_standalone() -> None:
    line = FakeLine()
    engine = EchoEngine()
    session = RealtimeSession(config={}, engine=engine, call_id="rtc_echo", output=line)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    assert session.detector is None  # the engine takes every frame itself
    for _ in range(5):
        session.feed_audio(tone(20))
    await watcher.until("output_audio_buffer.started")
    await asyncio.sleep(0.05)
    assert len(line.played) == 5 * 960
    await session.handle_client_event('{"type": "input_audio_buffer.commit"}', watcher.sub)
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "unsupported_for_model"
    await session.close("done")

    alone = RealtimeSession(config={}, engine=EchoEngine())
    await alone.start()
    watcher = Watcher(alone)
    await alone.handle_client_event(json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone(40)).decode()}))
    delta, _ = await watcher.until("response.output_audio.delta")
    assert base64.b64decode(delta["delta"]) == tone(40)
    await alone.close("done")


@pytest.mark.anyio
async def test_standalone_g711_passes_through_echo() -> None:
    """A socket speaking audio/pcmu to the echo engine: the bytes come back as they went."""
    alone = RealtimeSession(config={"audio": {"input": {"format": {"type": "audio/pcmu"}},
                                              "output": {"format": {"type": "audio/pcmu"}}}},
                            engine=EchoEngine())
    await alone.start()
    watcher = Watcher(alone)
    created = await watcher.next()
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    payload = bytes(np.random.default_rng(5).integers(0, 256, 161, dtype=np.uint8))
    await alone.handle_client_event(json.dumps(  # an odd length is fine: one byte a sample
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(payload).decode()}))
    delta, _ = await watcher.until("response.output_audio.delta")
    assert base64.b64decode(delta["delta"]) == payload
    await alone.close("done")


@pytest.mark.anyio
async def test_standalone_g711_converted_for_a_pcm_engine() -> None:
    """μ-law in, A-law out, to an engine that takes and gives PCM16 at 24 kHz."""
    engine = ScriptedEngine()
    session = RealtimeSession(
        config={"audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                          "output": {"format": {"type": "audio/pcma"}}}}, engine=engine)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    heard_tone = tone(200)
    ulaw = ulaw_encode(soxr.resample(np.frombuffer(heard_tone, "<i2"), 24000, 8000).tobytes())
    await session.handle_client_event(json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(ulaw).decode()}))
    await session.handle_client_event('{"type": "input_audio_buffer.commit"}')
    await session.handle_client_event('{"type": "response.create"}')
    _, seen = await watcher.until("response.done")
    # The engine heard 200 ms at 24 kHz, and its 400 ms reply went out as 8 kHz A-law.
    assert abs(len(engine.heard[0]) - len(heard_tone)) <= 48 * 5
    sent = b"".join(base64.b64decode(ev["delta"]) for ev in seen
                    if ev["type"] == "response.output_audio.delta")
    assert 8 * 370 <= len(sent) <= 8 * 400
    pcm = np.frombuffer(alaw_decode(sent), "<i2").astype(float)
    assert 2000 < np.abs(pcm[400:-400]).max() < 3300  # the reply's tone, at its level
    await session.close("done")


@pytest.mark.anyio
async def test_relayed_events_pass_through() -> None:
    class Upstream(ScriptedEngine):
        duplex = True

        def push_audio(self, pcm: bytes) -> None:
            self.heard.append(pcm)

        async def events(self) -> Any:
            yield RelayedEvent({"type": "input_audio_buffer.speech_started",
                                "event_id": "event_up", "audio_start_ms": 5,
                                "item_id": "item_up"})

    session = RealtimeSession(config={}, engine=Upstream())
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    relayed = await watcher.next()
    assert relayed["event_id"] == "event_up" and relayed["item_id"] == "item_up"
