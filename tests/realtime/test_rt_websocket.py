"""End to end: /v1/realtime under uvicorn, driven by the official openai SDK and websockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from openai import AsyncOpenAI
from websockets.typing import Subprotocol

from callgate.api.realtime_ws import make_realtime_router
from callgate.config import load
from callgate.engines.base import AudioDelta, Engine, ResponseDone, TextDelta, ToolCall
from callgate.realtime.protocol import MAX_EVENT_BYTES
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.session import RealtimeSession

from .doubles import (
    EnergyVad,
    FakeLine,
    Gate,
    ScriptedEngine,
    check_server_event,
    frames,
    silence,
    speech_reply,
    tone,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-callgate-test"
CALL_ID = "rtc_e2e_1"
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
       "silence_duration_ms": 500}


@dataclass
class Gateway:
    port: int
    registry: SessionRegistry
    engines: list[ScriptedEngine] = field(default_factory=list)
    clients: list[AsyncOpenAI] = field(default_factory=list)

    def client(self, key: str = API_KEY) -> AsyncOpenAI:
        # Closed with the gateway: an SDK client left to the garbage collector closes its
        # connection pool on whatever event loop runs then, long after this one is gone.
        client = AsyncOpenAI(api_key=key, base_url=f"http://127.0.0.1:{self.port}/v1",
                             websocket_base_url=f"ws://127.0.0.1:{self.port}/v1",
                             max_retries=0)
        self.clients.append(client)
        return client

    async def call(self, engine: ScriptedEngine, call_id: str = CALL_ID,
                   **config: Any) -> tuple[RealtimeSession, FakeLine]:
        """A phone call's session, as the call layer sets it up on accept."""
        line = FakeLine()
        session = RealtimeSession(
            config={"type": "realtime", "model": "gpt-realtime",
                    "audio": {"input": {"turn_detection": VAD}}, **config},
            engine=engine, call_id=call_id, output=line, vad=EnergyVad())
        self.registry.add(session)
        await session.start()
        return session, line


@contextlib.asynccontextmanager
async def gateway() -> AsyncIterator[Gateway]:
    engines: list[ScriptedEngine] = []

    async def engine_factory(model: str) -> Engine:
        engine = ScriptedEngine(transcripts=["hello from the socket"])
        engines.append(engine)
        return engine

    registry = SessionRegistry(engine_factory, vad_factory=EnergyVad)
    settings = load(api_key=API_KEY)
    app = FastAPI()
    app.include_router(make_realtime_router(registry, settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, ws="websockets-sansio", log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    gateway = Gateway(sock.getsockname()[1], registry, engines)
    try:
        yield gateway
    finally:
        for client in gateway.clients:
            await client.close()
        await registry.close_all()
        server.should_exit = True
        await task
        sock.close()


async def recv(connection: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The next event, checked against the SDK's models as agent frameworks do."""
    raw = await asyncio.wait_for(connection.recv_bytes(), timeout)
    ev: dict[str, Any] = json.loads(raw)
    check_server_event(ev)
    return ev


async def until(connection: Any, kind: str,
                timeout: float = 5.0) -> tuple[dict[str, Any], list[str]]:
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await recv(connection, max(deadline - loop.time(), 0.01))
        seen.append(ev["type"])
        if ev["type"] == kind:
            return ev, seen


async def test_sdk_drives_a_call_session() -> None:
    async with gateway() as gw:
        engine = ScriptedEngine(transcripts=["book a table"],
                                replies=[speech_reply("Thank you for calling.", 300),
                                         speech_reply("Sure, for how many?", 300)])
        session, line = await gw.call(engine)
        async with gw.client().realtime.connect(call_id=CALL_ID) as conn:
            created = await recv(conn)
            assert created["type"] == "session.created"
            assert created["session"]["id"] == session.session_id

            await conn.session.update(session={"type": "realtime",
                                               "instructions": "You take bookings."})
            updated, _ = await until(conn, "session.updated")
            assert updated["session"]["instructions"] == "You take bookings."

            await conn.response.create(response={"instructions": "Greet the caller."})
            _, seen = await until(conn, "output_audio_buffer.stopped")
            assert seen.index("output_audio_buffer.started") < seen.index("response.done")
            assert "response.output_audio.delta" not in seen
            assert len(line.played) == 2 * 24000 * 300 // 1000
            assert engine.requests[0].instructions == "Greet the caller."

            for frame in frames(silence(200) + tone(700) + silence(700)):
                session.feed_audio(frame)
            _, seen = await until(conn, "conversation.item.input_audio_transcription.completed")
            assert seen[:3] == ["input_audio_buffer.speech_started",
                                "input_audio_buffer.speech_stopped",
                                "input_audio_buffer.committed"]
            done, _ = await until(conn, "response.done")
            assert done["response"]["status"] == "completed"
            assert engine.requests[1].instructions == "You take bookings."
            assert engine.requests[1].conversation[-1]["content"][0]["transcript"] == \
                "book a table"


async def test_sdk_barge_in_and_tool_round_trip() -> None:
    async with gateway() as gw:
        gate = asyncio.Event()
        engine = ScriptedEngine(transcripts=["stop", "weather"], replies=[
            [TextDelta("A very long story about"), AudioDelta(tone(3000, 3000)), Gate(gate)],
            [ToolCall("call_w", "get_weather", '{"city":"Paris"}'), ResponseDone()],
            speech_reply("Sunny in Paris."),
        ])
        session, line = await gw.call(engine)
        async with gw.client().realtime.connect(call_id=CALL_ID) as conn:
            await recv(conn)
            await conn.response.create()
            await until(conn, "output_audio_buffer.started")
            await asyncio.sleep(0.2)
            for frame in frames(tone(300)):
                session.feed_audio(frame)
            truncated, seen = await until(conn, "conversation.item.truncated")
            assert seen[-2:] == ["output_audio_buffer.cleared", "conversation.item.truncated"]
            assert 150 <= truncated["audio_end_ms"] <= 1000
            done, _ = await until(conn, "response.done")
            assert done["response"]["status_details"]["reason"] == "turn_detected"
            assert line.clears and line.clears[0] >= 2000

            for frame in frames(silence(700)):
                session.feed_audio(frame)
            done, _ = await until(conn, "response.done")
            call = done["response"]["output"][0]
            assert call["type"] == "function_call" and call["call_id"] == "call_w"
            await conn.conversation.item.create(item={
                "type": "function_call_output", "call_id": "call_w", "output": '{"sky":"clear"}'})
            await until(conn, "conversation.item.added")
            await conn.response.create()
            done, _ = await until(conn, "response.done")
            assert done["response"]["status"] == "completed"
            assert engine.requests[-1].conversation[-1]["type"] == "function_call_output"
            gate.set()


async def test_malformed_events_get_errors_and_the_session_goes_on() -> None:
    async with gateway() as gw:
        await gw.call(ScriptedEngine())
        async with gw.client().realtime.connect(call_id=CALL_ID) as conn:
            await recv(conn)
            await conn.send_raw("{this is not json")
            error, _ = await until(conn, "error")
            assert error["error"]["code"] == "invalid_json"
            await conn.send_raw(json.dumps({"type": "response.dance", "event_id": "evt_9"}))
            error, _ = await until(conn, "error")
            assert (error["error"]["param"], error["error"]["event_id"]) == ("type", "evt_9")
            await conn.send_raw(json.dumps({"type": "session.update", "event_id": "evt_10",
                                            "session": {"type": "realtime",
                                                        "instructions": 42}}))
            error, _ = await until(conn, "error")
            assert error["error"]["param"] == "session.instructions"
            assert error["error"]["event_id"] == "evt_10"
            # Over callgate's 15 MiB event limit, under uvicorn's 16 MiB frame limit.
            big = "A" * MAX_EVENT_BYTES
            await conn.send_raw(json.dumps({"type": "input_audio_buffer.append",
                                            "audio": big}))
            error, _ = await until(conn, "error", timeout=30)
            assert error["error"]["code"] == "event_too_large"
            await conn.session.update(session={"type": "realtime", "instructions": "Still up."})
            updated, _ = await until(conn, "session.updated")
            assert updated["session"]["instructions"] == "Still up."


async def test_standalone_session_with_audio_over_the_socket() -> None:
    async with gateway() as gw:
        async with gw.client().realtime.connect(model="gpt-realtime") as conn:
            created = await recv(conn)
            assert created["session"]["model"] == "gpt-realtime"
            await conn.session.update(session={
                "type": "realtime", "audio": {"input": {"turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                    "silence_duration_ms": 500}}}})
            await until(conn, "session.updated")
            pcm = silence(300) + tone(800) + silence(800)
            for start in range(0, len(pcm), 4800):  # 100 ms appends
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[start:start + 4800]).decode())
            await until(conn, "input_audio_buffer.speech_started")
            completed, _ = await until(
                conn, "conversation.item.input_audio_transcription.completed")
            assert completed["transcript"] == "hello from the socket"
            audio = b""
            while (ev := await recv(conn))["type"] != "response.done":
                if ev["type"] == "response.output_audio.delta":
                    audio += base64.b64decode(ev["delta"])
            assert len(audio) == 2 * 24000 * 400 // 1000
            assert "output_audio_buffer" not in json.dumps(ev)
        # The session ends with its socket, once the server has seen the close (a moment
        # longer on a busy machine: within 5 s).
        for _ in range(100):
            if gw.engines[0].closed and len(gw.registry) == 0:
                break
            await asyncio.sleep(0.05)
        assert gw.engines[0].closed
        assert len(gw.registry) == 0


async def test_handshake_refusals() -> None:
    async with gateway() as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/realtime"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        cases = [(f"{url}?call_id=rtc_nope", auth, 404),
                 (f"{url}?call_id=rtc_nope", {"Authorization": "Bearer wrong"}, 401),
                 (f"{url}?model=gpt-realtime", {}, 401),
                 (f"{url}?model=no-such-model", auth, 400),
                 (url, auth, 400)]
        for target, headers, status in cases:
            with pytest.raises(websockets.InvalidStatus) as info:
                async with websockets.connect(target, additional_headers=headers):
                    pass
            assert info.value.response.status_code == status, target
            body = json.loads(info.value.response.body or b"{}")
            assert "error" in body
        with pytest.raises(websockets.InvalidStatus):
            async with gw.client("wrong").realtime.connect(call_id="rtc_nope"):
                pass
        # Browsers authenticate with a subprotocol; the server picks "realtime".
        await gw.call(ScriptedEngine())
        async with websockets.connect(
                f"{url}?call_id={CALL_ID}",
                subprotocols=[Subprotocol("realtime"),
                              Subprotocol(f"openai-insecure-api-key.{API_KEY}")]) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"


async def test_observers_come_and_go_and_hangup_closes_them() -> None:
    async with gateway() as gw:
        session, _ = await gw.call(ScriptedEngine())
        url = f"ws://127.0.0.1:{gw.port}/v1/realtime?call_id={CALL_ID}&model=gpt-realtime"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        # The SIP guide's own client: plain websockets, one JSON event per text frame.
        async with websockets.connect(url, additional_headers=auth) as first:
            async with websockets.connect(url, additional_headers=auth) as second:
                for ws in (first, second):
                    assert json.loads(await ws.recv())["type"] == "session.created"
                await second.send(json.dumps({"type": "response.create", "response": {
                    "instructions": "Say hello"}}))
                for ws in (first, second):
                    while json.loads(await ws.recv())["type"] != "response.done":
                        pass
            await asyncio.sleep(0.05)
            assert not session.closed  # the session outlives a dropped socket
            session.dtmf("7")
            while (ev := json.loads(await first.recv()))["type"] != \
                    "input_audio_buffer.dtmf_event_received":
                pass
            assert ev["event"] == "7"
            gw.registry.remove(CALL_ID)
            await session.close("caller hung up")
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    await asyncio.wait_for(first.recv(), 5)
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url, additional_headers=auth):
                pass
        assert info.value.response.status_code == 404
