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
from callgate.api.operator import make_operator_router
from callgate.api.realtime_ws import make_realtime_router
from callgate.calls.shell import CallShell
from callgate.calls.webhook import WebhookSender
from callgate.cluster import registry_from_settings
from callgate.cluster.forward import Forwarder
from callgate.cluster.registry import CallRegistry
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.engines.registry import create_engine
from callgate.engines.supervisor import close_workers, workers
from callgate.engines.threads import run_blocking
from callgate.engines.vad import load_silero_model
from callgate.log import event
from callgate.media.pacer import SendTick
from callgate.media.ports import PortPool
from callgate.observe.events import Observers, WorkerRestarted
from callgate.observe.live import CallWatch
from callgate.observe.metrics import GatewayMetrics
from callgate.observe.recording import prune
from callgate.observe.records import RecordStore, database_url
from callgate.realtime.registry import SessionRegistry
from callgate.sip.endpoint import SipEndpoint
from callgate.sip.limits import RequestLimits
from callgate.sip.transaction import TimerConfig
from callgate.sip.transport import SipTransportManager, StreamLimits

logger = logging.getLogger("callgate.server")

PRUNE_INTERVAL = 3600.0  # seconds between enforcements of the recordings' retention
GC_THRESHOLDS = (2000, 10, 100)  # the cyclic collector, once the gateway has started


@dataclass
class Gateway:
    """Everything one ``callgate serve`` runs; ``start`` binds, ``stop`` winds it all down."""

    settings: Settings
    sessions: SessionRegistry = field(init=False)
    sip: SipTransportManager | None = None
    calls: CallShell | None = None
    http: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    sip_addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    tick: SendTick = field(default_factory=SendTick)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    records: RecordStore | None = None
    watch: CallWatch = field(init=False)
    pruner: asyncio.Task[None] | None = None
    registry: CallRegistry | None = None
    forwarder: Forwarder | None = None

    def __post_init__(self) -> None:
        self.sessions = SessionRegistry(self.engine_for, same_engine=self.settings.same_engine)
        s = self.settings
        if s.records:
            self.records = RecordStore(database_url(s.database_url, s.data_dir),
                                       queue_size=s.records_queue,
                                       on_dropped=self._record_dropped)
        self.watch = CallWatch(metrics=self.metrics, records=self.records,
                               recordings=s.data_dir / "recordings",
                               record_all=s.record_calls, model_label=self._model_label)

    async def _prune_recordings(self) -> None:
        """Enforce the recordings' retention at start and every hour, off the loop thread
        (a folder of many files takes a while to scan)."""
        folder, days = self.settings.data_dir / "recordings", self.settings.recording_retention_days
        while True:
            removed = await asyncio.to_thread(prune, folder, days)
            if removed:
                event(logger, "recordings.pruned", folder=str(folder), removed=removed)
            await asyncio.sleep(PRUNE_INTERVAL)

    def _record_dropped(self, reason: str, count: int) -> None:
        self.metrics.records_dropped.labels(reason).inc(count)

    def _model_label(self, model: str) -> str:
        """A bounded metric label: a configured model, else the default engine's name
        (OpenAI's model names, in any variant a client sends, all run there)."""
        return model if model in self.settings.model_routes else self.settings.default_model

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
        for name, message in s.exposures:  # require_auth turned these into errors already
            event(logger, name, logging.WARNING, detail=message)
        workers().on_exit = lambda stage: self.watch.call_event(WorkerRestarted(stage))
        await self.preload()
        tls = _tls_context(s)
        if self.records is not None:
            await self.records.open()
        if s.recording_retention_days > 0:
            self.pruner = asyncio.create_task(self._prune_recordings(), name="prune")
        observers = Observers(self.watch)
        webhooks = (WebhookSender(s.webhook_url, s.webhook_secret, timeout=s.webhook_timeout,
                                  observer=observers) if s.webhook_url else None)
        low, high = s.rtp_port_range
        self.calls = CallShell(s, sessions=self.sessions, engine_factory=self.engine_for,
                               port_pool=PortPool(low, high), tick=self.tick, webhooks=webhooks,
                               observer=observers)
        endpoint = SipEndpoint(
            timers=TimerConfig(t1=s.sip_t1, t2=s.sip_t2, t4=s.sip_t4, timer_d=64 * s.sip_t1),
            limits=RequestLimits(
                invite_rate=s.sip_invite_rate, invite_burst=s.sip_invite_burst,
                probe_rate=s.sip_probe_rate, probe_burst=s.sip_probe_burst,
                max_headers=s.sip_max_headers, max_header_line=s.sip_max_header_line))
        self.sip = SipTransportManager(endpoint, self.calls.on_sip_event,
                                       max_message_size=s.max_message_size,
                                       limits=StreamLimits(
                                           max_connections=s.sip_max_connections,
                                           max_connections_per_source=(
                                               s.sip_max_connections_per_source),
                                           idle_timeout=s.sip_idle_timeout,
                                           message_deadline=s.sip_message_deadline))
        contact_ports: dict[str, int] = {}  # filled below, once bound
        self.calls.attach(self.sip, contact_ports=contact_ports)
        self.sip_addresses["udp"] = await self.sip.listen_udp(s.sip_host, s.sip_port)
        # TCP shares the UDP port number (RFC 3261 §18.2.1), also when the port was 0 = any.
        self.sip_addresses["tcp"] = await self.sip.listen_tcp(s.sip_host,
                                                              self.sip_addresses["udp"][1])
        if tls is not None:
            self.sip_addresses["tls"] = await self.sip.listen_tls(s.sip_host, s.sip_tls_port, tls)
        if s.public_ip:
            for name, (_, port) in self.sip_addresses.items():
                endpoint.sent_by[name] = (s.public_ip, port)
        contact_ports.update({name: addr[1] for name, addr in self.sip_addresses.items()})
        self.calls.start()

        self.registry = registry_from_settings(s, s.http_port)
        if self.registry is not None:
            await self.registry.start()
            calls = self.calls
            self.calls.registry = self.registry
            self.forwarder = Forwarder(self.registry, calls.knows, max_body=MAX_BODY_BYTES)
        app = create_app(s, self.calls, on_recording=self.watch.want_recording, extra_routers=[
            make_realtime_router(self.sessions, s, self.engine_for,
                                 self.forwarder.relay if self.forwarder is not None else None),
            make_operator_router(api_key=s.api_key, metrics=self.metrics, watch=self.watch,
                                 records=self.records, recordings=s.data_dir / "recordings")])
        if self.forwarder is not None:
            app.middleware("http")(self.forwarder.middleware)
        config = uvicorn.Config(
            app, host=s.http_host, port=s.http_port, http="httptools", ws="websockets-sansio",
            lifespan="off",
            log_config=None, access_log=False,
            # Our own Server header instead of uvicorn's banner (which names the framework).
            server_header=False, headers=[("server", s.user_agent)],
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
        # A call leaves ~90 objects in reference cycles, and the transactions of a busy
        # minute live 32 s, so at the default thresholds (700, 10, 10) a full pass over every
        # live call (130-190 ms) ran every second or two at 300 setups a second and stalled
        # the loop. A larger youngest generation lets more of a call die young, and a full pass
        # waits for 100 middle-generation passes instead of 10: at 300 setups a second,
        # INVITE->200 p50 went from 180-430 ms to 2.3 ms, with young passes still under 2 ms.
        gc.set_threshold(*GC_THRESHOLDS)
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
        await self.watch.close()
        if self.pruner is not None:
            self.pruner.cancel()
            await asyncio.gather(self.pruner, return_exceptions=True)
        if self.records is not None:
            await self.records.close()
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
