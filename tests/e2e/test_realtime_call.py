"""A live phone call steered with the official ``openai`` SDK (issue 5, Must show 1).

baresip calls callgate; the webhook receiver accepts the call with ``client.realtime.calls``;
the test then drives the call's session through ``client.realtime.connect(call_id=…)`` exactly
as an application written for OpenAI's SIP interface would, on the local engine with a real
OpenAI-compatible server on loopback as its language model. The caller's speech is espeak-ng,
switched on at the moments the test picks; what the caller heard is checked in its dump.

The conversation, in order:

1. ``session.created``; ``session.update`` sets new instructions and a tool;
2. ``response.create`` with instructions: the engine greets the caller on the phone line;
3. the caller asks a question: VAD turn, commit, transcription, an automatic response that
   the language model is asked with the updated instructions and the transcript;
4. the answer is long and slow; the caller talks over it: the response is cancelled, the line
   cleared and the assistant item truncated to what was played;
5. the language model answers the caller's second turn with a tool call; the test returns the
   result (``function_call_output`` + ``response.create``) and the model's answer is spoken.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.harness import Gateway, callgate
from tests.e2e.livecall import (
    RATE,
    Caller,
    baresip_call,
    silence,
    speech,
    transcribe,
    voiced_spans,
    write_wav,
)
from tests.e2e.receiver import SECRET, Receiver
from tests.e2e.sdk_events import WAIT, Events
from tests.engines.audio import words
from tests.engines.peer import PeerState, Reply, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

API_KEY = "sk-live-call-test"
MARKER = "Marker-K2P9"
FIRST_INSTRUCTIONS = "You are a support agent."
INSTRUCTIONS = f"You are a weather bot. {MARKER}"
GREETING_INSTRUCTIONS = "Greet the caller."
QUESTION = "what is the weather like today"
INTERRUPTION = "please check the forecast for Paris"
TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}
TOOL_RESULT = '{"city": "Paris", "forecast": "sunny, 24 degrees"}'
# The answer the caller talks over: long sentences, streamed slowly, the last one withheld
# for 30 s, so the response is still running (and audio still queued) when the caller speaks.
LONG_ANSWER = [f"Sentence {n}: the weather today is mostly sunny with a light breeze from the "
               f"west, and the temperature will climb slowly through the afternoon. "
               for n in range(1, 7)]
LINE_SILENCE_S = 120.0  # every source file ends in this much silence: the call stays up



def _accept(calls: queue.Queue[str]) -> Callable[[openai.OpenAI, str], None]:
    def action(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(
            call_id, type="realtime", model="gpt-realtime", instructions=FIRST_INSTRUCTIONS,
            audio={"input": {"turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                "silence_duration_ms": 500}}})
        calls.put(call_id)

    return action


def _say(folder: Path, name: str, text: str) -> Path:
    return write_wav(folder / f"{name}.wav", speech(text, tail=LINE_SILENCE_S))


def test_sdk_steers_a_live_call(tmp_path: Path) -> None:
    state = PeerState(replies=[
        Reply(pieces=["Hello, ", "thanks for calling."]),
        Reply(pieces=list(LONG_ANSWER), delay=0.3, pause_after={len(LONG_ANSWER) - 1: 30.0}),
        Reply(tool_calls=[{"id": "call_weather_1", "name": "get_weather",
                           "arguments": '{"city": "Paris"}'}]),
        Reply(pieces=["In Paris it is sunny ", "and twenty four degrees."]),
    ])
    calls: queue.Queue[str] = queue.Queue()
    idle = write_wav(tmp_path / "idle.wav", silence(LINE_SILENCE_S))
    receiver = Receiver("http://placeholder/v1", _accept(calls), api_key=API_KEY)
    with serve(state) as llm_url, \
            callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, api_key=API_KEY,
                     llm_base_url=llm_url, llm_model="peer-model") as gw:
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        with receiver, baresip_call(gw, tmp_path / "caller", idle) as caller:
            try:
                call_id = calls.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"the call was not accepted: {receiver.errors}; "
                                     f"{receiver.events}") from None
            events = asyncio.run(_conversation(gw, caller, call_id, tmp_path))
            caller.wait_ended(timeout=WAIT)
        assert not receiver.errors, receiver.errors
        sent, received = caller.sent(), caller.received()
    _check_requests(state)
    _check_line(sent, received, events)


async def _conversation(gw: Gateway, caller: Caller, call_id: str, folder: Path) -> Events:
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=f"{gw.http}/v1",
                                websocket_base_url=f"ws://127.0.0.1:{gw.http_port}/v1",
                                max_retries=0)
    async with client, client.realtime.connect(call_id=call_id) as connection:
        events = Events(connection)
        pump = asyncio.create_task(events.pump())
        try:
            await _steer(connection, events, caller, folder)
            await client.realtime.calls.hangup(call_id)
            # The call is over: callgate closes the socket normally.
            await asyncio.wait_for(asyncio.gather(pump, return_exceptions=True), WAIT)
            closed = events.closed
            assert isinstance(closed, ConnectionClosed), closed
            assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
        finally:
            pump.cancel()
            events.save(folder / "events.jsonl")
    return events


async def _steer(connection: Any, events: Events, caller: Caller, folder: Path) -> None:
    # 1. The session as accepted; instructions and tools changed with session.update.
    created = await events.wait("session.created")
    assert created == 0, events.types()
    assert events[0]["session"]["instructions"] == FIRST_INSTRUCTIONS, events[0]
    await connection.session.update(session={"type": "realtime", "instructions": INSTRUCTIONS,
                                             "tools": [TOOL]})
    updated = await events.wait("session.updated")
    assert events[updated]["session"]["instructions"] == INSTRUCTIONS, events[updated]
    assert [t["name"] for t in events[updated]["session"]["tools"]] == ["get_weather"]

    # 2. response.create with instructions: the greeting is spoken on the phone line.
    mark = len(events.items)
    await connection.response.create(response={"instructions": GREETING_INSTRUCTIONS})
    started = await events.wait("output_audio_buffer.started", mark, why="for the greeting")
    done = await events.wait("response.done", mark, why="for the greeting")
    stopped = await events.wait("output_audio_buffer.stopped", mark, why="for the greeting")
    greeting = events[done]["response"]
    assert greeting["status"] == "completed", greeting
    assert started < done < stopped, events.types(mark)
    transcript = greeting["output"][0]["content"][0]["transcript"]
    assert transcript == "Hello, thanks for calling.", greeting

    # 3. The caller asks: a VAD turn, its transcript, and an automatic answer.
    mark = len(events.items)
    caller.say(_say(folder, "question", QUESTION))
    speech_started = await events.wait("input_audio_buffer.speech_started", mark,
                                       why="when the caller asks")
    item_id = events[speech_started]["item_id"]

    def of_item(ev: dict[str, Any]) -> bool:
        return bool(ev.get("item_id") == item_id)

    stopped = await events.wait("input_audio_buffer.speech_stopped", mark, where=of_item)
    committed = await events.wait("input_audio_buffer.committed", mark, where=of_item)
    heard = await events.wait("conversation.item.input_audio_transcription.completed", mark,
                              where=of_item)
    assert speech_started < stopped < committed < heard, events.types(mark)
    text = events[heard]["transcript"]
    assert "weather" in words(text), f"the question was transcribed as {text!r}"

    # 4. The answer is long; the caller talks over it once the line is playing it.
    answer_started = await events.wait("output_audio_buffer.started", committed,
                                       why="for the answer")
    answer_id = events[answer_started]["response_id"]
    await asyncio.sleep(1.5)
    assert events.find("response.done", committed) is None, \
        f"the long answer ended early: {events.types(committed)}"
    mark = len(events.items)
    caller.say(_say(folder, "interruption", INTERRUPTION))
    barge = await events.wait("input_audio_buffer.speech_started", mark,
                              why="when the caller talks over the answer")

    def of_answer(ev: dict[str, Any]) -> bool:
        return bool(ev.get("response", {}).get("id", ev.get("response_id")) == answer_id)

    cancelled = await events.wait("response.done", mark, where=of_answer, timeout=5,
                                  why="(the barge-in must cancel the answer)")
    cleared = await events.wait("output_audio_buffer.cleared", mark, where=of_answer, timeout=5)
    answer = events[cancelled]["response"]
    assert answer["status"] == "cancelled", answer
    assert answer["status_details"]["reason"] == "turn_detected", answer
    assistant_item = answer["output"][0]["id"]
    truncated = await events.wait("conversation.item.truncated", mark, timeout=5,
                                  where=lambda ev: ev["item_id"] == assistant_item)
    audio_end_ms = events[truncated]["audio_end_ms"]
    assert barge < min(cancelled, cleared, truncated), events.types(mark)
    assert audio_end_ms >= 500, events[truncated]
    assert events.find("output_audio_buffer.stopped", mark, of_answer) is None, \
        "a cleared answer must not also report a normal stop"

    # 5. The caller's second turn gets a tool call; the result goes back; the answer follows.
    turn = await events.wait("input_audio_buffer.committed", barge)
    call_done = await events.wait("response.function_call_arguments.done", turn,
                                  why="(the language model answers with a tool call)")
    call = events[call_done]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    tool_response = await events.wait("response.done", turn, where=lambda ev: (
        ev["response"]["id"] == call["response_id"]))
    assert events[tool_response]["response"]["status"] == "completed", events[tool_response]
    mark = len(events.items)
    await connection.conversation.item.create(item={
        "type": "function_call_output", "call_id": call["call_id"], "output": TOOL_RESULT})
    await connection.response.create()
    final = await events.wait("response.done", mark, why="after the tool result")
    assert events[final]["response"]["status"] == "completed", events[final]
    await events.wait("output_audio_buffer.stopped", mark, why="after the tool result")
    assert events.find("error") is None, events[events.find("error") or 0]


def _check_requests(state: PeerState) -> None:
    """What the language model was asked, request by request."""
    assert len(state.requests) == 4, [r["messages"] for r in state.requests]
    greet, ask, interrupt, after_tool = (r["messages"] for r in state.requests)
    # response.create's instructions replace the session's for that response only.
    assert greet[0] == {"role": "system", "content": GREETING_INSTRUCTIONS}, greet
    # The automatic answers use the instructions session.update set, and the transcripts.
    for messages in (ask, interrupt, after_tool):
        assert messages[0] == {"role": "system", "content": INSTRUCTIONS}, messages
    assert ask[-1]["role"] == "user" and "weather" in words(ask[-1]["content"]), ask
    assert interrupt[-1]["role"] == "user", interrupt
    assert words(interrupt[-1]["content"]) & {"check", "forecast", "paris"}, interrupt
    # The interrupted answer stays in the context only as far as the caller heard it.
    answer = [m["content"] for m in interrupt if m["role"] == "assistant"][-1]
    full = "".join(LONG_ANSWER)
    assert full.startswith(answer) and 0 < len(answer) < len(full) // 2, (answer, full)
    assert [t["function"]["name"] for t in state.requests[2]["tools"]] == ["get_weather"]
    # The tool result travels back as a tool message after the assistant's call.
    calls = [m for m in after_tool if m.get("tool_calls")]
    assert calls and calls[-1]["tool_calls"][0]["id"] == "call_weather_1", after_tool
    assert after_tool[-1] == {"role": "tool", "tool_call_id": "call_weather_1",
                              "content": TOOL_RESULT}, after_tool


def _check_line(sent: Any, received: Any, events: Events) -> None:
    """What the caller heard, against when it spoke (both dumps share one clock)."""
    spoken = voiced_spans(sent)
    assert len(spoken) == 2, f"the caller should have said two things: {spoken}"
    (ask_start, ask_end), (cut_start, cut_end) = spoken
    heard = voiced_spans(received)

    def audio_in(start: float, end: float) -> float:
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in heard)

    def text_in(start: float, end: float) -> set[str]:
        return words(transcribe(received[int(start * RATE):int(end * RATE)]))

    summary = f"caller said {spoken}, heard {heard}"
    # The greeting (response.create) came down the line before the caller spoke.
    assert audio_in(0, ask_start) >= 0.8, summary
    greeting = text_in(0, ask_start)
    assert greeting & {"hello", "thanks", "calling"}, (greeting, summary)
    # The long answer played between the question and the interruption ...
    assert audio_in(ask_end, cut_start) >= 0.8, summary
    # ... and stopped soon after the caller started talking over it (nothing can be spoken
    # again before the caller's turn ends and the tool round trip completes).
    assert audio_in(cut_start + 1.0, cut_end + 0.4) == 0.0, summary
    # The answer after the tool result was heard.
    assert audio_in(cut_end, len(received) / RATE) >= 0.8, summary
    final = text_in(cut_end, len(received) / RATE)
    assert final & {"paris", "sunny", "twenty", "degrees"}, (final, summary)
    truncated = events[events.find("conversation.item.truncated") or 0]
    played = audio_in(ask_end, cut_start + 1.0)
    print(f"\nbarge-in: item truncated at {truncated.get('audio_end_ms')} ms; the caller heard "
          f"{played * 1000:.0f} ms of voiced answer audio; {summary}")
