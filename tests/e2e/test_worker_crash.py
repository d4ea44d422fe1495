"""A model worker dies in the middle of a live call: one turn fails, the call goes on.

The gateway runs the local engine as ``make serve`` does (the bundled SmolLM2 in the ``llm``
worker, Whisper in ``stt``, Piper in ``tts``). A baresip caller asks a question; while the
stage under test serves that turn, the test kills its worker process (SIGSEGV for the LLM,
the way llama.cpp crashed on an AVX-512 Xeon; SIGKILL for STT, the way the OOM killer does).
To hit the turn deterministically the worker is first stopped (SIGSTOP), so the turn's
request is sure to be waiting in it when the signal lands.

The application, on the official ``openai`` SDK, sees an ``error`` event that names the
stage; the call stays up; the worker comes back; the caller's next question gets a spoken
answer; and the gateway process never exits.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import Gateway, callgate
from tests.e2e.livecall import (
    Caller,
    baresip_call,
    log_events,
    silence,
    speech,
    voiced_spans,
    wait_logged,
    write_wav,
)
from tests.e2e.receiver import SECRET, Receiver
from tests.e2e.sdk_events import Events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

API_KEY = "sk-worker-crash-test"
FIRST = "can you tell me what time your office opens tomorrow"
SECOND = "what is the weather like today"
LINE_SILENCE_S = 90.0
WAIT = 45.0  # a restarted worker reloads its model; 2 shared cores


def _accept(calls: queue.Queue[str]) -> Any:
    def action(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(
            call_id, type="realtime", model="gpt-realtime", max_output_tokens=30,
            instructions="You are a receptionist. Answer in one short sentence.",
            audio={"input": {"turn_detection": {"type": "server_vad",
                                                "silence_duration_ms": 500}}})
        calls.put(call_id)

    return action


def _worker_pids(gw: Gateway, stage: str) -> list[int]:
    return [int(ev["pid"]) for ev in log_events(gw, "worker.ready") if ev["stage"] == stage]


@pytest.mark.parametrize(("stage", "sig"), [("llm", signal.SIGSEGV), ("stt", signal.SIGKILL)])
def test_a_dead_worker_costs_one_turn_not_the_call(tmp_path: Path, stage: str,
                                                   sig: signal.Signals) -> None:
    calls: queue.Queue[str] = queue.Queue()
    idle = write_wav(tmp_path / "idle.wav", silence(LINE_SILENCE_S))
    receiver = Receiver("http://placeholder/v1", _accept(calls), api_key=API_KEY)
    with callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET, api_key=API_KEY,
                  default_model="local") as gw:
        wait_logged(gw, "engines.preloaded", timeout=60)
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        with receiver, baresip_call(gw, tmp_path / "caller", idle) as caller:
            call_id = calls.get(timeout=WAIT)
            asyncio.run(_call(gw, caller, call_id, stage, sig, tmp_path))
            assert gw.process.poll() is None, "the gateway exited"
            metrics = httpx.get(f"{gw.http}/metrics", timeout=5,
                                headers={"Authorization": f"Bearer {API_KEY}"}).text
            assert f'callgate_engine_worker_restarts_total{{worker="{stage}"}} 1.0' in metrics
            sent, received = caller.sent(), caller.received()
        assert not receiver.errors, receiver.errors
        assert gw.process.poll() is None, "the gateway exited"
    _check_line(sent, received)


async def _call(gw: Gateway, caller: Caller, call_id: str, stage: str, sig: signal.Signals,
                folder: Path) -> None:
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=f"{gw.http}/v1",
                                websocket_base_url=f"ws://127.0.0.1:{gw.http_port}/v1",
                                max_retries=0)
    async with client, client.realtime.connect(call_id=call_id) as connection:
        events = Events(connection)
        pump = asyncio.create_task(events.pump())
        try:
            await events.wait("session.created")
            await _crash_one_turn(gw, caller, events, stage, sig, folder)
            await _next_turn_is_answered(caller, events, folder)
            await client.realtime.calls.hangup(call_id)
        finally:
            pump.cancel()
            events.save(folder / "events.jsonl")


async def _crash_one_turn(gw: Gateway, caller: Caller, events: Events, stage: str,
                          sig: signal.Signals, folder: Path) -> None:
    (victim,) = _worker_pids(gw, stage)
    os.kill(victim, signal.SIGSTOP)
    mark = len(events.items)
    caller.say(write_wav(folder / "first.wav", speech(FIRST, tail=LINE_SILENCE_S)))
    # The turn reaches the stopped worker: STT at the commit, the LLM once it has the words.
    reached = ("input_audio_buffer.committed" if stage == "stt"
               else "conversation.item.input_audio_transcription.completed")
    await events.wait(reached, mark, timeout=WAIT, why="for the first question")
    await asyncio.sleep(0.5)
    os.kill(victim, sig)
    os.kill(victim, signal.SIGCONT)
    failed = await events.wait("error", mark, timeout=WAIT, why=f"after the {stage} worker died")
    error = events[failed]["error"]
    assert error["code"] == f"{stage}_worker_failed", error
    assert f"the {stage} worker was killed by {sig.name}" in error["message"], error
    if stage == "stt":
        await events.wait("conversation.item.input_audio_transcription.failed", mark)
    else:
        done = await events.wait("response.done", mark)
        assert events[done]["response"]["status"] == "failed", events[done]
    # A new worker took its place and has its model loaded again.
    deadline = time.monotonic() + WAIT
    while len(_worker_pids(gw, stage)) < 2:
        assert time.monotonic() < deadline, f"the {stage} worker did not come back"
        await asyncio.sleep(0.1)
    assert _worker_pids(gw, stage)[1] != victim
    # Whatever that turn still does (an apology, or nothing), let it finish before the next.
    await asyncio.sleep(3.0)


async def _next_turn_is_answered(caller: Caller, events: Events, folder: Path) -> None:
    mark = len(events.items)
    caller.say(write_wav(folder / "second.wav", speech(SECOND, tail=LINE_SILENCE_S)))
    heard = await events.wait("conversation.item.input_audio_transcription.completed", mark,
                              timeout=WAIT, why="for the second question")
    assert "weather" in events[heard]["transcript"].lower(), events[heard]
    done = await events.wait("response.done", heard, timeout=WAIT,
                             why="for the answer to the second question")
    response = events[done]["response"]
    # "incomplete": the answer reached the 30-token cap, spoken all the same.
    assert response["status"] in ("completed", "incomplete"), response
    await events.wait("output_audio_buffer.stopped", heard, timeout=WAIT)


def _check_line(sent: Any, received: Any) -> None:
    """The caller heard an answer after the second question (both dumps share one clock)."""
    spoken = voiced_spans(sent)
    assert len(spoken) == 2, f"the caller should have said two things: {spoken}"
    second_end = spoken[1][1]
    heard = [span for span in voiced_spans(received) if span[0] >= second_end]
    assert sum(end - start for start, end in heard) >= 0.5, \
        f"no spoken answer after the second question: {voiced_spans(received)}"
