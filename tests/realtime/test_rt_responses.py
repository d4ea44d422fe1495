"""Session events and responses with a scripted engine: text, audio, tools, cancellation."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from callgate.engines.base import AudioDelta, EngineError, ResponseDone, TextDelta, ToolCall
from callgate.realtime.session import RealtimeSession

from .doubles import FakeLine, Gate, ScriptedEngine, Watcher, speech_reply, tone

pytestmark = pytest.mark.anyio

NO_VAD: dict[str, Any] = {"audio": {"input": {"turn_detection": None}}}


async def standalone(engine: ScriptedEngine, **config: Any) -> tuple[RealtimeSession, Watcher]:
    session = RealtimeSession(config={"model": "local", **NO_VAD, **config}, engine=engine)
    await session.start()
    return session, Watcher(session)


def send(rt: RealtimeSession, watcher: Watcher | None = None, /, **event: Any) -> Any:
    return rt.handle_client_event(json.dumps(event), watcher.sub if watcher else None)


async def test_session_created_first_and_update() -> None:
    engine = ScriptedEngine()
    session, watcher = await standalone(engine, instructions="Be brief.")
    created = await watcher.next()
    assert created["type"] == "session.created"
    s = created["session"]
    assert s["id"].startswith("sess_") and s["object"] == "realtime.session"
    assert s["instructions"] == "Be brief." and s["model"] == "local"
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert engine.started is not None and engine.started["instructions"] == "Be brief."

    other = Watcher(session)
    await other.next()  # a late subscriber also gets session.created first
    await send(session, watcher, type="session.update", event_id="evt_1",
               session={"type": "realtime", "instructions": "Speak French.",
                        "audio": {"output": {"voice": "marin"}}})
    updated, _ = await watcher.until("session.updated")
    assert updated["session"]["instructions"] == "Speak French."
    assert updated["session"]["audio"]["output"]["voice"] == "marin"
    assert updated["session"]["audio"]["output"]["speed"] == 1.0  # merged, not replaced
    assert engine.updates[-1]["instructions"] == "Speak French."
    assert (await other.next())["type"] == "session.updated"


async def test_text_turn_standalone_audio_events() -> None:
    engine = ScriptedEngine(replies=[speech_reply("Hello caller.", audio_ms=500)])
    session, watcher = await standalone(engine)
    await watcher.next()
    await send(session, watcher, type="conversation.item.create",
               item={"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Hi!"}]})
    added, _ = await watcher.until("conversation.item.added")
    assert added["item"]["content"][0]["text"] == "Hi!" and added["previous_item_id"] is None
    await watcher.until("conversation.item.done")
    await send(session, watcher, type="response.create",
               response={"instructions": "Greet.", "metadata": {"turn": "1"}})
    done, events = await watcher.until("response.done")
    kinds = Watcher.types(events)
    order = ["response.created", "response.output_item.added", "conversation.item.added",
             "response.content_part.added", "response.output_audio_transcript.delta",
             "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.content_part.done",
             "response.output_item.done", "conversation.item.done", "response.done"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    audio = b"".join(base64.b64decode(e["delta"]) for e in events
                     if e["type"] == "response.output_audio.delta")
    assert len(audio) == 2 * 24000 * 500 // 1000
    assert "output_audio_buffer.started" not in kinds  # standalone: no line
    response = done["response"]
    assert response["status"] == "completed" and response["metadata"] == {"turn": "1"}
    assert response["usage"]["input_tokens"] == 12 and response["usage"]["total_tokens"] == 19
    message = response["output"][0]
    assert message["content"][0] == {"type": "output_audio", "transcript": "Hello caller."}
    request = engine.requests[0]
    assert request.instructions == "Greet."
    assert [i["type"] for i in request.conversation] == ["message"]
    assert session.conversation.items()[-1]["id"] == message["id"]


async def test_call_session_plays_on_the_line() -> None:
    line = FakeLine()
    engine = ScriptedEngine(replies=[speech_reply("On the phone.", audio_ms=200)])
    session = RealtimeSession(config={**NO_VAD}, engine=engine, call_id="rtc_1", output=line)
    await session.start()
    watcher = Watcher(session)
    await send(session, watcher, type="response.create")
    _, events = await watcher.until("output_audio_buffer.stopped", timeout=3)
    kinds = Watcher.types(events)
    assert "response.output_audio.delta" not in kinds  # the sideband carries no audio
    assert kinds.index("response.content_part.added") < kinds.index(
        "output_audio_buffer.started") < kinds.index("response.done") < kinds.index(
        "output_audio_buffer.stopped")
    assert len(line.played) == 2 * 24000 * 200 // 1000


async def test_text_modality() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("Just "), TextDelta("text."),
                                      AudioDelta(tone(100)), ResponseDone()]])
    session, watcher = await standalone(engine, output_modalities=["text"])
    await send(session, watcher, type="response.create")
    done, events = await watcher.until("response.done")
    kinds = Watcher.types(events)
    assert "response.output_audio.delta" not in kinds
    text_done = next(e for e in events if e["type"] == "response.output_text.done")
    assert text_done["text"] == "Just text."
    assert done["response"]["output"][0]["content"][0] == {"type": "output_text",
                                                           "text": "Just text."}
    assert engine.requests[0].output_modalities == ("text",)


async def test_one_active_response_and_cancel() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta("Thinking"), AudioDelta(tone(100)), Gate(gate),
                                      TextDelta(" more"), ResponseDone()]])
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create")
    _created, _ = await watcher.until("response.output_audio.delta")
    await send(session, watcher, type="response.create", event_id="evt_again")
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["event_id"] == "evt_again"
    await send(session, watcher, type="response.cancel", response_id="resp_other")
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "response_cancel_not_active"
    await send(session, watcher, type="response.cancel")
    done, _events = await watcher.until("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled",
                                                  "reason": "client_cancelled"}
    assert done["response"]["output"][0]["status"] == "incomplete"
    await asyncio.sleep(0.01)
    assert engine.respond_closed == 1  # the engine's stream was closed
    gate.set()
    await send(session, watcher, type="response.cancel")
    error, _ = await watcher.until("error")
    assert error["error"]["code"] == "response_cancel_not_active"
    # A new response may start now.
    await send(session, watcher, type="response.create")
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"


async def test_tool_call_round_trip() -> None:
    tools = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    engine = ScriptedEngine(replies=[
        [ToolCall("call_1", "get_weather", '{"city":"Oslo"}'), ResponseDone()],
        speech_reply("It is sunny in Oslo."),
    ])
    session, watcher = await standalone(engine, tools=tools, tool_choice="auto")
    await send(session, watcher, type="conversation.item.create",
               item={"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Weather in Oslo?"}]})
    await send(session, watcher, type="response.create")
    done, events = await watcher.until("response.done")
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["name"] == "get_weather" and args_done["call_id"] == "call_1"
    assert args_done["arguments"] == '{"city":"Oslo"}'
    delta = next(e for e in events if e["type"] == "response.function_call_arguments.delta")
    assert delta["delta"] == '{"city":"Oslo"}'
    call_item = done["response"]["output"][0]
    assert call_item["type"] == "function_call" and call_item["status"] == "completed"
    assert engine.requests[0].tools == tools

    await send(session, watcher, type="conversation.item.create",
               item={"type": "function_call_output", "call_id": "call_1",
                     "output": '{"sky":"sunny"}'})
    added, _ = await watcher.until("conversation.item.added")
    assert added["previous_item_id"] == call_item["id"]
    await send(session, watcher, type="response.create")
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"
    kinds = [i["type"] for i in engine.requests[1].conversation]
    assert kinds == ["message", "function_call", "function_call_output", ]
    assert engine.requests[1].conversation[2]["output"] == '{"sky":"sunny"}'


async def test_engine_error_fails_the_response() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("Hm"), EngineError("LLM down", "llm_error")]])
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create")
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "llm_error"


async def test_engine_exception_fails_the_response_but_not_the_session() -> None:
    def boom(_request: Any) -> Any:
        raise RuntimeError("kaput")

    engine = ScriptedEngine(reply=boom)
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create")
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "failed"
    engine.reply = None
    await send(session, watcher, type="response.create")
    done, _ = await watcher.until("response.done")
    assert done["response"]["status"] == "completed"


async def test_incomplete_from_engine() -> None:
    engine = ScriptedEngine(replies=[[TextDelta("Long"),
                                      ResponseDone("incomplete", "max_output_tokens")]])
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create", response={"max_output_tokens": 5})
    done, _ = await watcher.until("response.done")
    assert done["response"]["status_details"] == {"type": "incomplete",
                                                  "reason": "max_output_tokens"}
    assert done["response"]["max_output_tokens"] == 5
    assert engine.requests[0].max_output_tokens == 5


async def test_out_of_band_response() -> None:
    engine = ScriptedEngine()
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create",
               response={"conversation": "none", "output_modalities": ["text"],
                         "input": [{"type": "message", "role": "user",
                                    "content": [{"type": "input_text", "text": "Classify"}]}]})
    done, events = await watcher.until("response.done")
    assert "conversation.item.added" not in Watcher.types(events)
    assert done["response"]["conversation_id"] is None
    assert len(session.conversation) == 0
    assert engine.requests[0].conversation[0]["content"][0]["text"] == "Classify"


async def test_item_reference_input() -> None:
    engine = ScriptedEngine()
    session, watcher = await standalone(engine)
    await send(session, watcher, type="conversation.item.create",
               item={"id": "item_a", "type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "first"}]})
    await send(session, watcher, type="response.create",
               response={"conversation": "none",
                         "input": [{"type": "item_reference", "id": "item_a"},
                                   {"type": "message", "role": "user",
                                    "content": [{"type": "input_text", "text": "second"}]}]})
    await watcher.until("response.done")
    texts = [i["content"][0]["text"] for i in engine.requests[0].conversation]
    assert texts == ["first", "second"]
    await send(session, watcher, type="response.create",
               response={"input": [{"type": "item_reference", "id": "item_missing"}]})
    error, _ = await watcher.until("error")
    assert error["error"]["param"] == "response.input[0].id"


async def test_close_ends_subscribers_and_engine() -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine(replies=[[TextDelta("x"), Gate(gate)]])
    session, watcher = await standalone(engine)
    await send(session, watcher, type="response.create")
    await watcher.until("response.output_audio_transcript.delta")
    await session.close("caller hung up")
    rest = [ev async for ev in watcher.sub]
    assert rest[-1]["type"] == "response.done"
    assert rest[-1]["response"]["status"] == "cancelled"
    assert engine.closed and session.closed
    await session.handle_client_event('{"type":"response.create"}')  # ignored, no crash
    late = session.subscribe()
    assert (await late.__anext__())["type"] == "session.created"
