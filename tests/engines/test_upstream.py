"""The upstream-realtime engine against a real upstream: callgate's own ``/v1/realtime``.

The upstream is callgate's FastAPI realtime router under uvicorn on a loopback port, in this
process, with the ``echo`` engine (model ``echo``: every appended frame comes back as
``response.output_audio.delta``) or a scripted cascade engine with an energy VAD (model
``gpt-realtime``: turn detection, barge-in and responses as callgate runs them). The engine is
tested on its own, then as a call's (and a standalone socket's) engine inside a
``RealtimeSession`` (the relay half, ``realtime/relay.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from callgate.config import ModelRoute, load
from callgate.engines.base import (
    AudioDelta,
    Engine,
    EngineError,
    EngineEvent,
    RelayedEvent,
    ResponseRequest,
)
from callgate.engines.echo import EchoEngine
from callgate.engines.registry import create_engine
from callgate.engines.upstream import (
    MAX_PENDING_EVENTS,
    UpstreamRealtimeEngine,
    UpstreamUnavailable,
    upstream_url,
)
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.session import RealtimeSession
from tests.realtime.doubles import (
    FRAME,
    EnergyVad,
    FakeLine,
    ScriptedEngine,
    Watcher,
    frames,
    silence,
    speech_reply,
    tone,
)

API_KEY = "sk-upstream-test"
WAIT = 5.0


class RecordingEcho(EchoEngine):
    """The echo engine, noting in which order settings and audio reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    async def update(self, session: dict[str, Any]) -> None:
        self.order.append("session.update")

    def push_audio(self, pcm: bytes) -> None:
        if self.order[-1:] != ["audio"]:
            self.order.append("audio")
        super().push_audio(pcm)


@dataclass
class Upstream:
    """callgate's realtime router on a loopback port, and what its engine factory made."""

    port: int
    registry: SessionRegistry
    server: uvicorn.Server
    models: list[str] = field(default_factory=list)
    scripted: list[ScriptedEngine] = field(default_factory=list)
    echoes: list[RecordingEcho] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def route(self, model: str = "echo", key: str | None = API_KEY) -> ModelRoute:
        return ModelRoute(engine="realtime", url=self.url, api_key=key, model=model)

    def sessions(self) -> list[RealtimeSession]:
        return list(self.registry._standalone.values())


@contextlib.asynccontextmanager
async def upstream(replies: list[Any] | None = None) -> AsyncIterator[Upstream]:
    up: Upstream

    async def factory(model: str) -> Engine:
        up.models.append(model)
        if model == "echo":
            up.echoes.append(RecordingEcho())
            return up.echoes[-1]
        engine = ScriptedEngine(transcripts=["hello"], replies=list(replies or []))
        up.scripted.append(engine)
        return engine

    registry = SessionRegistry(factory, vad_factory=EnergyVad)
    app = FastAPI()
    app.include_router(make_router(registry))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio", log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    up = Upstream(sock.getsockname()[1], registry, server)
    try:
        yield up
    finally:
        await registry.close_all()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def make_router(registry: SessionRegistry) -> Any:
    from callgate.api.realtime_ws import make_realtime_router

    return make_realtime_router(registry, load(api_key=API_KEY))


async def connected(up: Upstream, model: str = "echo") -> tuple[UpstreamRealtimeEngine, Reader]:
    """An upstream engine connected to ``up``, what it yields collected from now on."""
    engine = UpstreamRealtimeEngine(up.route(model))
    await engine.connect()
    return engine, Reader(engine)


class Reader:
    """Collects what an engine's ``events()`` yields, in order, in a task."""

    def __init__(self, engine: Engine) -> None:
        self.events: list[EngineEvent] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(engine))

    async def _read(self, engine: Engine) -> None:
        try:
            async for ev in engine.events():
                self.events.append(ev)
                self._changed.set()
        finally:
            self.ended.set()
            self._changed.set()

    async def until(self, check: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    def relayed(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [ev.event for ev in self.events if isinstance(ev, RelayedEvent)
                and (kind is None or ev.event["type"] == kind)]

    def audio(self) -> bytes:
        return b"".join(ev.pcm for ev in self.events if isinstance(ev, AudioDelta))


def pcm_ramp(ms: int) -> bytes:
    """Distinct samples (not a periodic tone), so any reordering or loss shows."""
    count = 24000 * ms // 1000
    return bytes((np.arange(count) * 7 % 20011 - 10000).astype("<i2").tobytes())


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


# --- the engine on its own ------------------------------------------------------------------
def test_caller_audio_comes_back_from_an_echo_upstream() -> None:
    async def main() -> None:
        async with upstream() as up:
            engine, reader = await connected(up)
            said = pcm_ramp(1000)
            early, late = frames(said)[:10], frames(said)[10:]
            for frame in early:  # the line may deliver audio before the session starts
                engine.push_audio(frame)
            await engine.start({"instructions": "Say it back.", "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"voice": "marin"}}})
            for frame in late:
                engine.push_audio(frame)
                await asyncio.sleep(0)
            await reader.until(lambda: len(reader.audio()) >= len(said))
            assert reader.audio() == said
            assert up.models == ["echo"]  # ?model= reached the upstream

            kinds = [ev.event["type"] if isinstance(ev, RelayedEvent) else type(ev).__name__
                     for ev in reader.events]
            assert kinds[0] == "session.created"
            # The session's settings reached the upstream before the early audio.
            assert up.echoes[0].order == ["session.update", "audio"]
            # Each audio delta is relayed, then given decoded, right after it.
            deltas = [i for i, kind in enumerate(kinds) if kind == "response.output_audio.delta"]
            assert deltas and all(kinds[i + 1] == "AudioDelta" for i in deltas)
            for i in deltas:
                relayed, decoded = reader.events[i], reader.events[i + 1]
                assert isinstance(relayed, RelayedEvent) and isinstance(decoded, AudioDelta)
                assert base64.b64decode(relayed.event["delta"]) == decoded.pcm
            # Batches of 40 ms go up (1 s of 20 ms frames -> 25 appends, echoed one by one).
            assert len(deltas) == 25

            updated = reader.relayed("session.updated")[0]["session"]
            assert updated["instructions"] == "Say it back."
            assert updated["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert updated["audio"]["output"]["voice"] == "marin"
            assert updated["audio"]["input"]["turn_detection"] is None
            assert updated["id"] == engine.upstream_session_id
            await engine.aclose()
            await asyncio.wait_for(reader.ended.wait(), WAIT)
            assert not [ev for ev in reader.events if isinstance(ev, EngineError)]

    run(main)


def test_application_events_go_upstream_with_the_line_format_kept() -> None:
    async def main() -> None:
        async with upstream() as up:
            engine, reader = await connected(up)
            await engine.start({})
            engine.forward_client_event({
                "type": "session.update", "event_id": "evt_app_1",
                "session": {"type": "realtime", "instructions": "From the app.",
                            "model": "something-else",
                            "audio": {"output": {"format": {"type": "audio/pcmu"}}}}})
            engine.forward_client_event({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hello upstream"}]}})
            await reader.until(lambda: len(reader.relayed("conversation.item.done")) >= 1)
            update = reader.relayed("session.updated")[-1]["session"]
            assert update["instructions"] == "From the app."
            assert update["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert update["model"] == "echo"
            item = reader.relayed("conversation.item.done")[0]["item"]
            assert item["content"][0]["text"] == "hello upstream"
            assert not reader.relayed("error")
            # A bad event is the upstream's to judge: its error comes back relayed.
            engine.forward_client_event({"type": "conversation.item.delete",
                                         "item_id": "item_nope", "event_id": "evt_app_2"})
            await reader.until(lambda: bool(reader.relayed("error")))
            assert reader.relayed("error")[0]["error"]["event_id"] == "evt_app_2"
            await engine.aclose()

    run(main)


def test_respond_asks_the_upstream_for_a_response() -> None:
    async def main() -> None:
        async with upstream(replies=[speech_reply("Hello there.", 300)]) as up:
            engine, reader = await connected(up, "gpt-realtime")
            await engine.start({"audio": {"input": {"turn_detection": None}}})
            out = [ev async for ev in engine.respond(ResponseRequest(
                instructions="Greet the caller.", conversation=[], voice="cedar"))]
            assert out == []  # the response arrives through events()
            await reader.until(lambda: bool(reader.relayed("response.done")))
            assert up.scripted[0].requests[0].instructions == "Greet the caller."
            assert up.scripted[0].requests[0].voice == "cedar"
            assert reader.relayed("response.done")[0]["response"]["status"] == "completed"
            assert len(reader.audio()) == 2 * 24000 * 300 // 1000
            await engine.aclose()

    run(main)


def test_a_refusing_or_absent_upstream_fails_connect_with_a_clear_message() -> None:
    async def main() -> None:
        async with upstream() as up:
            with pytest.raises(UpstreamUnavailable, match="HTTP 401"):
                await UpstreamRealtimeEngine(up.route(key="sk-wrong")).connect()
            with pytest.raises(UpstreamUnavailable, match="HTTP 400: Unknown model 'nope'"):
                await UpstreamRealtimeEngine(up.route("nope")).connect()
            port = up.port
        route = ModelRoute(engine="realtime", url=f"ws://127.0.0.1:{port}/v1/realtime"
                           "?api-key=secret-in-query", model="echo")
        with pytest.raises(UpstreamUnavailable) as info:
            await UpstreamRealtimeEngine(route).connect()
        message = str(info.value)
        assert f"upstream realtime server ws://127.0.0.1:{port}/v1/realtime:" in message
        assert "secret" not in message
        # Through the engine registry, as the call layer asks for it.
        settings = load(models={"up": route})
        with pytest.raises(UpstreamUnavailable):
            await create_engine("up", settings)
        with pytest.raises(ValueError, match="needs the upstream WebSocket 'url'"):
            await create_engine("up", load(models={"up": ModelRoute(engine="realtime")}))

    run(main)


def test_a_silent_upstream_times_out() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        route = ModelRoute(engine="realtime", url=f"ws://127.0.0.1:{port}/v1/realtime")
        with pytest.raises(UpstreamUnavailable, match=r"no answer within 0\.3 s"):
            await UpstreamRealtimeEngine(route, connect_timeout=0.3).connect()
        server.close()

    run(main)


def test_losing_the_upstream_is_one_error_and_nothing_else_breaks() -> None:
    async def main() -> None:
        async with upstream() as up:
            engine, reader = await connected(up)
            await engine.start({})
            await reader.until(lambda: bool(reader.relayed("session.updated")))
            await up.registry.close_all("upstream going away")  # the upstream ends the socket
            await asyncio.wait_for(reader.ended.wait(), WAIT)
            errors = [ev for ev in reader.events if isinstance(ev, EngineError)]
            assert len(errors) == 1 and errors[0].code == "upstream_closed"
            assert "closed the connection (code 1000: session ended)" in errors[0].message
            engine.push_audio(bytes(FRAME))  # the caller keeps talking: no harm
            with pytest.raises(UpstreamUnavailable, match="closed the connection"):
                engine.forward_client_event({"type": "response.create"})
            assert [ev async for ev in engine.respond(ResponseRequest("", []))] == [
                EngineError(errors[0].message, "upstream_unavailable")]
            await engine.aclose()

    run(main)


def test_an_upstream_that_does_not_read_costs_old_audio_then_the_connection() -> None:
    async def main() -> None:
        async with upstream() as up:
            # Not started: nothing is written, as with a stalled peer.
            engine, reader = await connected(up)
            for frame in frames(bytes(2 * 24000 * 5)):  # 5 s of caller audio
                engine.push_audio(frame)
            assert engine.dropped_audio_ms == 3000
            for _ in range(MAX_PENDING_EVENTS + 1):
                await engine.update({})
                await asyncio.sleep(0)
            await asyncio.wait_for(reader.ended.wait(), WAIT)
            errors = [ev for ev in reader.events if isinstance(ev, EngineError)]
            assert len(errors) == 1 and "is not reading" in errors[0].message
            await engine.aclose()

    run(main)


def test_the_url_gets_the_model_and_a_websocket_scheme() -> None:
    assert upstream_url("https://api.openai.com/v1/realtime", "gpt-realtime") == \
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert upstream_url("ws://h:1/v1/realtime?deployment=x&model=kept", "other") == \
        "ws://h:1/v1/realtime?deployment=x&model=kept"
    assert upstream_url("ws://h:1/v1/realtime", None) == "ws://h:1/v1/realtime"


# --- as a session's engine: the relay ---------------------------------------------------------
async def call_session(up: Upstream, model: str, **config: Any) -> tuple[RealtimeSession,
                                                                        FakeLine, Watcher]:
    """A phone call's session on the upstream engine, set up as the call layer does."""
    engine = await create_engine("up", load(models={"up": up.route(model)}))
    line = FakeLine()
    session = RealtimeSession(config={"type": "realtime", "model": "up", **config},
                              engine=engine, call_id="rtc_relay_1", output=line)
    watcher = Watcher(session)
    await session.start()
    return session, line, watcher


def test_a_call_hears_the_upstream_and_its_sideband_sees_the_upstream_events() -> None:
    async def main() -> None:
        async with upstream() as up:
            session, line, watcher = await call_session(up, "echo")
            assert session.relay is not None
            said = pcm_ramp(600)
            for frame in frames(said):
                session.feed_audio(frame)
                await asyncio.sleep(0.001)
            created, seen = await watcher.until("response.created")
            upstream_session = up.sessions()[0]
            assert created["response"]["id"] == upstream_session.last_response_id
            await watcher.until("output_audio_buffer.started",
                                response_id=created["response"]["id"])
            async with asyncio.timeout(WAIT):
                while len(line.played) < len(said):
                    await asyncio.sleep(0.01)
            assert bytes(line.played) == said
            seen += watcher.pending()
            kinds = Watcher.types(watcher.seen)
            assert kinds[0] == "session.created" and kinds.count("session.created") == 1
            assert "response.output_audio.delta" not in kinds  # on the line, not the socket
            # The upstream's session is this session's config from now on.
            assert "session.updated" in kinds
            assert session.config["id"] == upstream_session.session_id

            # The application's client events go up; the answers come back relayed.
            await session.handle_client_event(json.dumps({
                "type": "session.update", "session": {"type": "realtime",
                                                      "instructions": "Relayed."}}))
            updated, _ = await watcher.until("session.updated")
            assert upstream_session.config["instructions"] == "Relayed."
            assert updated["session"]["instructions"] == "Relayed."
            # A malformed event is refused here, to its sender only.
            other = session.subscribe()
            other.get_nowait()
            await session.handle_client_event('{"type": "response.create", "bogus": 1}',
                                              watcher.sub)
            error, _ = await watcher.until("error")
            assert error["error"]["code"] == "unknown_parameter"
            assert other.get_nowait() is None
            await session.close("test over")
            async with asyncio.timeout(WAIT):  # the upstream session ends with its socket
                while not upstream_session.closed:
                    await asyncio.sleep(0.01)

    run(main)


def test_barge_in_clears_the_line_and_truncates_upstream_to_what_was_heard() -> None:
    async def main() -> None:
        async with upstream(replies=[speech_reply("A long answer.", 4000)]) as up:
            session, line, watcher = await call_session(up, "gpt-realtime")
            for frame in frames(silence(200)):
                session.feed_audio(frame)
            await session.handle_client_event(json.dumps({"type": "response.create"}))
            done, _ = await watcher.until("response.done")
            response_id = done["response"]["id"]
            item_id = done["response"]["output"][0]["id"]
            assert len(line.played) == 2 * 24000 * 4  # all 4 s handed to the line at once
            await asyncio.sleep(0.5)  # the caller hears half a second, then talks over it
            for frame in frames(tone(600) + silence(100)):
                session.feed_audio(frame)
                await asyncio.sleep(0.02)
                if line.clears:
                    break
            await watcher.until("input_audio_buffer.speech_started")
            cleared, _ = await watcher.until("output_audio_buffer.cleared")
            assert cleared["response_id"] == response_id
            assert line.clears and 2500 < line.clears[0] < 3600
            truncated, _ = await watcher.until("conversation.item.truncated")
            assert truncated["item_id"] == item_id
            heard = 4000 - line.clears[0]
            assert abs(truncated["audio_end_ms"] - heard) <= 25
            item = up.sessions()[0].conversation.get(item_id)
            assert item is not None and item["status"] == "completed"
            kinds = Watcher.types(watcher.seen)
            assert "output_audio_buffer.stopped" not in kinds  # it never finished playing
            assert kinds.index("output_audio_buffer.started") < kinds.index("response.done")
            await session.close("test over")

    run(main)


def test_a_response_plays_out_then_the_line_says_stopped() -> None:
    async def main() -> None:
        async with upstream(replies=[speech_reply("Short.", 300)]) as up:
            session, line, watcher = await call_session(up, "gpt-realtime")
            await session.handle_client_event(json.dumps({"type": "response.create"}))
            done, _ = await watcher.until("response.done")
            stopped, _ = await watcher.until("output_audio_buffer.stopped", timeout=2)
            assert stopped["response_id"] == done["response"]["id"]
            assert len(line.played) == 2 * 24000 * 300 // 1000 and line.queued_ms() == 0
            # Nothing is playing: clearing is acknowledged with the last response's id.
            await session.handle_client_event(json.dumps({"type": "output_audio_buffer.clear"}))
            cleared, _ = await watcher.until("output_audio_buffer.cleared")
            assert cleared["response_id"] == done["response"]["id"]
            await session.close("test over")

    run(main)


def test_a_standalone_socket_gets_the_upstream_audio_as_it_came() -> None:
    async def main() -> None:
        async with upstream() as up:
            engine = await create_engine("up", load(models={"up": up.route("echo")}))
            session = RealtimeSession(config={"type": "realtime", "model": "up"},
                                      engine=engine)
            watcher = Watcher(session)
            await session.start()
            said = pcm_ramp(200)
            await session.handle_client_event(json.dumps({
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(said).decode()}))
            heard = b""
            while len(heard) < len(said):
                delta, _ = await watcher.until("response.output_audio.delta")
                heard += base64.b64decode(delta["delta"])
            assert heard == said
            assert "output_audio_buffer.started" not in Watcher.types(watcher.seen)
            await session.close("test over")

    run(main)


def test_a_call_outlives_its_upstream() -> None:
    async def main() -> None:
        async with upstream() as up:
            session, _, watcher = await call_session(up, "echo")
            await watcher.until("session.updated")
            await up.registry.close_all("upstream going away")
            error, _ = await watcher.until("error")
            assert error["error"]["code"] == "upstream_closed"
            assert "closed the connection" in error["error"]["message"]
            assert not session.closed
            session.feed_audio(bytes(FRAME))  # the caller hears silence; nothing breaks
            await session.handle_client_event(json.dumps({"type": "response.create",
                                                          "event_id": "evt_late"}))
            late, _ = await watcher.until("error")
            assert late["error"]["code"] == "upstream_unavailable"
            assert late["error"]["event_id"] == "evt_late"
            await session.close("test over")

    run(main)
