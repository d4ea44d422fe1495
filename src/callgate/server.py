"""The gateway process: SIP transports, media, call control and the HTTP/WebSocket API on one
asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from callgate.api.app import MAX_BODY_BYTES, create_app
from callgate.api.realtime_ws import make_realtime_router
from callgate.calls.manager import CallManager
from callgate.calls.signalling import Signalling
from callgate.calls.webhook import WebhookSender
from callgate.cluster import registry_from_settings
from callgate.cluster.forward import Forwarder
from callgate.cluster.registry import CallRegistry
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.engines.registry import create_engine
from callgate.engines.supervisor import close_workers
from callgate.engines.threads import run_blocking
from callgate.engines.vad import load_silero_model
from callgate.log import event
from callgate.media.pacer import SendTick
from callgate.media.ports import PortPool
from callgate.realtime.registry import SessionRegistry
from callgate.sip.endpoint import SipEndpoint
from callgate.sip.transaction import TimerConfig
from callgate.sip.transport import SipTransportManager

logger = logging.getLogger("callgate.server")


@dataclass
class Gateway:
    """Everything one ``callgate serve`` runs; ``start`` binds, ``stop`` winds it all down."""

    settings: Settings
    sessions: SessionRegistry = field(init=False)
    sip: SipTransportManager | None = None
    calls: CallManager | None = None
    http: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    sip_addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    tick: SendTick = field(default_factory=SendTick)
    registry: CallRegistry | None = None
    forwarder: Forwarder | None = None

    def __post_init__(self) -> None:
        self.sessions = SessionRegistry(self.engine_for)

    async def engine_for(self, model: str) -> Engine:
        return await create_engine(model, self.settings)

    async def preload(self) -> None:
        """Load the models the first call will need, before calls arrive.

        Loading them on the first call stalls the loop (Whisper's load holds the GIL for
        ~0.1 s), which costs every call in progress packets. The model that first call uses is
        the default session's without a webhook, else the default engine's (OpenAI model names
        resolve to it)."""
        s = self.settings
        model = str((s.default_session.get("model") if not s.webhook_url else None)
                    or s.default_model)
        resolved = s.resolve_model(model)
        if resolved is None or resolved[1].engine not in ("local", "openai-compatible"):
            return  # nothing heavy to load (echo), or a remote server's own business
        started = time.monotonic()
        event(logger, "engines.preloading", model=model)
        try:
            await run_blocking(load_silero_model)
            engine = await self.engine_for(model)
            try:
                await engine.start(s.default_session)
            finally:
                await engine.aclose()
        except Exception as exc:  # the first call reports it properly; serving goes on
            event(logger, "engines.preload_failed", logging.WARNING, model=model, error=str(exc))
            return
        stages: dict[str, Any] = engine.stages()
        event(logger, "engines.preloaded", model=model,
              ms=round((time.monotonic() - started) * 1000), **stages)

    async def start(self) -> None:
        s = self.settings
        await self.preload()
        tls = _tls_context(s)
        webhooks = (WebhookSender(s.webhook_url, s.webhook_secret, timeout=s.webhook_timeout)
                    if s.webhook_url else None)
        low, high = s.rtp_port_range
        self.calls = CallManager(s, sessions=self.sessions, engine_factory=self.engine_for,
                                 port_pool=PortPool(low, high), tick=self.tick,
                                 webhooks=webhooks)
        endpoint = SipEndpoint(timers=TimerConfig(t1=s.sip_t1, t2=s.sip_t2, t4=s.sip_t4,
                                                  timer_d=64 * s.sip_t1))
        signalling: Signalling | None = None

        def on_event(ev: object) -> None:
            assert signalling is not None
            signalling.on_event(ev)  # type: ignore[arg-type]

        self.sip = SipTransportManager(endpoint, on_event, max_message_size=s.max_message_size)
        self.sip_addresses["udp"] = await self.sip.listen_udp(s.sip_host, s.sip_port)
        # TCP shares the UDP port number (RFC 3261 §18.2.1), also when the port was 0 = any.
        self.sip_addresses["tcp"] = await self.sip.listen_tcp(s.sip_host,
                                                              self.sip_addresses["udp"][1])
        if tls is not None:
            self.sip_addresses["tls"] = await self.sip.listen_tls(s.sip_host, s.sip_tls_port, tls)
        if s.public_ip:
            for name, (_, port) in self.sip_addresses.items():
                endpoint.sent_by[name] = (s.public_ip, port)
        signalling = Signalling(self.calls, self.sip, contact_ports={
            name: addr[1] for name, addr in self.sip_addresses.items()})

        self.registry = registry_from_settings(s, s.http_port)
        if self.registry is not None:
            await self.registry.start()
            calls = self.calls
            self.calls.registry = self.registry
            self.forwarder = Forwarder(self.registry,
                                       lambda cid: cid in calls.calls or cid in calls.ended,
                                       max_body=MAX_BODY_BYTES)
        app = create_app(s, self.calls, extra_routers=[make_realtime_router(
            self.sessions, s, self.engine_for,
            self.forwarder.relay if self.forwarder is not None else None)])
        if self.forwarder is not None:
            app.middleware("http")(self.forwarder.middleware)
        config = uvicorn.Config(
            app, host=s.http_host, port=s.http_port, ws="websockets-sansio", lifespan="off",
            log_config=None, access_log=False,
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key else None)
        self.http = _HttpServer(config)
        self.http_task = asyncio.create_task(self.http.serve(), name="http")
        while not self.http.started:
            if self.http_task.done():
                self.http_task.result()  # raises the bind error
                raise OSError(f"cannot serve HTTP on {s.http_host}:{s.http_port}")
            await asyncio.sleep(0.01)
        # What is loaded by now (modules, models, the app) lives as long as the process. Frozen,
        # the cyclic GC stops re-scanning it on every full collection: one took ~75 ms here
        # (130,000 objects), a stall of the send tick that costs every call several packets.
        gc.collect()
        gc.freeze()
        event(logger, "gateway.started", project_id=s.project_id,
              sip=" ".join(f"{n}:{a[0]}:{a[1]}" for n, a in self.sip_addresses.items()),
              http=f"{'https' if s.tls_cert else 'http'}://{s.http_host}:{s.http_port}",
              webhook=",".join(s.webhook_url) or "none (auto-accept)",
              default_model=s.default_model)

    async def drain(self) -> None:
        """Take no new calls (OPTIONS and INVITE get 503); wait up to ``drain_timeout`` for
        the calls in progress to end on their own. ``stop`` then ends the rest with BYE."""
        if self.calls is None:
            return
        self.calls.draining = True
        deadline = time.monotonic() + self.settings.drain_timeout
        event(logger, "gateway.draining", calls=self.calls.active_count,
              timeout=self.settings.drain_timeout)
        while self.calls.active_count and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        event(logger, "gateway.drained", calls_left=self.calls.active_count)

    async def stop(self) -> None:
        if self.calls is not None:
            await self.calls.close()
        if self.registry is not None:
            await self.registry.close()
        if self.forwarder is not None:
            await self.forwarder.aclose()
        if self.http is not None:
            self.http.should_exit = True
            if self.http_task is not None:
                await self.http_task
        await self.sessions.close_all()
        await close_workers()  # after the sessions: none is left waiting on a worker
        self.tick.stop()
        if self.sip is not None:
            await self.sip.close()
        event(logger, "gateway.stopped")


class _HttpServer(uvicorn.Server):
    """uvicorn inside our loop: the gateway, not uvicorn, owns SIGINT/SIGTERM, so calls are
    hung up cleanly before the API goes away."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM. A cluster node (``redis_url`` set) drains on SIGTERM,
    the way a node leaves its cluster; a single node hangs up at once, as it always has."""
    gateway = Gateway(settings)
    stop = asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def terminate() -> None:
        drain.set()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await gateway.start()
        await stop.wait()
        if drain.is_set() and settings.redis_url:
            await gateway.drain()
    finally:
        await gateway.stop()
