"""The asyncio shell around the calls core: it feeds SIP events and the REST verbs to
:class:`callgate.calls.core.CallCore`, carries out the actions it returns, and arms one loop
timer at the core's ``get_timer()``.

It owns what the core must not: each call's media stream, engine and realtime session, the
webhook deliveries and the tasks they run in. It implements
:class:`callgate.calls.control.CallControl` for the REST API.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from callgate.calls import actions as act
from callgate.calls.call import new_call_id
from callgate.calls.control import CallError, CallStateConflict, InvalidCallRequest
from callgate.calls.core import CallCore
from callgate.calls.dialplan import plan_call
from callgate.calls.line import CallFailed, EngineFactory, LineOutput, local_ip_toward
from callgate.calls.reporting import call_answered, call_started
from callgate.calls.state import CallState
from callgate.calls.webhook import WebhookSender
from callgate.cluster.registry import CallRegistry
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.log import event
from callgate.media.codecs import codec_format
from callgate.media.formats import AudioFormat
from callgate.media.offer_answer import NegotiatedMedia
from callgate.media.pacer import SendTick
from callgate.media.ports import PortPool, PortsExhausted
from callgate.media.stream import MediaStream
from callgate.observe.events import CallObserver, Observers
from callgate.realtime import ProtocolError, check_engine, validate_session
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.session import RealtimeSession
from callgate.sip import events as ev
from callgate.sip.transport import SipTransportManager, is_ip

logger = logging.getLogger("callgate.calls")


def line_audio(engine: Engine, negotiated: NegotiatedMedia | None) -> AudioFormat:
    """What ``engine`` takes and gives on a line with the ``negotiated`` codec (its own
    sample rate while nothing is negotiated yet)."""
    if negotiated is None:
        return AudioFormat.pcm(engine.sample_rate)
    return engine.line_audio(codec_format(negotiated.codec))


class CallShell:
    """Construct, then :meth:`attach` the SIP transports; :meth:`on_sip_event` is the
    transport manager's event callback."""

    def __init__(self, settings: Settings, *, sessions: SessionRegistry,
                 engine_factory: EngineFactory, port_pool: PortPool, tick: SendTick,
                 webhooks: WebhookSender | None, observer: CallObserver | None = None) -> None:
        self.settings = settings
        self.observer: CallObserver = observer or Observers()
        self.registry: CallRegistry | None = None  # the cluster's, when there are several nodes
        self.sessions = sessions
        self.engine_factory = engine_factory
        self.port_pool = port_pool
        self.tick = tick
        self.webhooks = webhooks
        self.loop = asyncio.get_running_loop()
        self.sip: SipTransportManager | None = None
        self.core: CallCore | None = None
        self.media: dict[str, MediaStream] = {}
        self.engines: dict[str, Engine] = {}
        self.live: dict[str, RealtimeSession] = {}
        self.starting: dict[str, asyncio.Task[None]] = {}
        self._notifying: dict[str, asyncio.Task[Any]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False

    def attach(self, sip: SipTransportManager, *, contact_ports: Mapping[str, int]) -> CallCore:
        self.sip = sip
        self.core = CallCore(self.settings, sent_by=sip.endpoint.sent_by,
                             contact_ports=contact_ports,
                             local_ip=lambda remote: local_ip_toward(remote, self.settings))
        self.core.observer = self.observer
        return self.core

    def start(self) -> None:
        """The listeners are bound: trunks may register now."""
        self._core().start_trunks(self.loop.time())
        self.pump()

    # -- bookkeeping ----------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return self.core.active_count if self.core is not None else 0

    def _core(self) -> CallCore:
        assert self.core is not None, "SIP not attached"
        return self.core

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task failed", exc_info=task.exception(),
                         extra={"task": task.get_name()})

    # -- the core loop --------------------------------------------------------------------------

    def on_sip_event(self, event_: ev.Event) -> None:
        if isinstance(event_, ev.MessageDropped):
            event(logger, "sip.dropped", logging.DEBUG, reason=event_.reason,
                  peer=f"{event_.addr[0]}:{event_.addr[1]}")
            return
        self._core().handle_sip(event_, self.loop.time())
        self.pump()

    def pump(self) -> None:
        """Carry out every queued action, then re-arm the timer; safe to re-enter."""
        if self._pumping:
            return
        core = self._core()
        self._pumping = True
        try:
            while (action := core.next_action()) is not None:
                try:
                    self._do(action)
                except Exception as exc:  # one call's bad luck must not stall the others
                    event(logger, "calls.action_failed", logging.ERROR,
                          call_id=getattr(action, "call_id", None),
                          action=type(action).__name__, error=repr(exc))
        finally:
            self._pumping = False
        deadline = core.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else self.loop.call_at(deadline,
                                                                          self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._core().handle_timer(self.loop.time())
        self.pump()

    def _do(self, action: act.Action) -> None:
        sip = self.sip
        assert sip is not None
        if isinstance(action, act.SendResponse):
            sip.send_response(action.tx_key, action.response)
        elif isinstance(action, act.SendRequest):
            if is_ip(action.addr[0]):
                sip.send_request(action.request, action.addr, action.transport)
            else:
                self.spawn(self._resolve_and_send(action), f"resolve {action.addr[0]}")
        elif isinstance(action, act.SendKeepalive):
            if is_ip(action.addr[0]):
                sip.send_keepalive(action.addr, action.transport)
            else:
                self.spawn(self._resolve_and_keepalive(action), f"resolve {action.addr[0]}")
        elif isinstance(action, act.SendAck):
            sip.send_ack(action.request, action.addr, action.transport)
        elif isinstance(action, act.OfferCall):
            self._offer(action)
        elif isinstance(action, act.Notify):
            self._notify(action)
        elif isinstance(action, act.ConfigureMedia):
            media, engine = self.media.get(action.call_id), self.engines.get(action.call_id)
            if media is not None and engine is not None:
                media.start(action.negotiated, inline=engine.inline,
                            audio=line_audio(engine, action.negotiated))
                media.answered()  # the core configures media only once the call is confirmed
        elif isinstance(action, act.StartSession):
            self.starting[action.call_id] = self.spawn(
                self._start_session(action.call_id, action.config),
                f"session {action.call_id}")
        elif isinstance(action, act.Dtmf):
            session = self.live.get(action.call_id)
            if session is not None:
                session.dtmf(action.digit)
        elif isinstance(action, act.TransferFailed):
            session = self.live.get(action.call_id)
            if session is not None:
                session.transfer_failed(action.target_uri, action.detail)
        elif isinstance(action, act.CheckMedia):
            media = self.media.get(action.call_id)
            if media is not None:
                self._core().media_activity(action.call_id, media.session.packets_in,
                                            self.loop.time())
        elif isinstance(action, act.Release):
            self.spawn(self._release(action), f"release {action.call_id}")

    def _notify(self, action: act.Notify) -> None:
        """Deliver a progress webhook after the call's previous one, so that an application
        sees ringing, answered and ended in that order even when they come quickly."""
        if self.webhooks is None:
            return
        webhooks, call_id = self.webhooks, action.call_id
        previous = self._notifying.get(call_id)

        async def deliver() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await webhooks.deliver(action.event, keep_trying=lambda: True)

        task = self.spawn(deliver(), f"webhook {call_id}")
        self._notifying[call_id] = task

        def forget(done: asyncio.Task[Any]) -> None:
            if self._notifying.get(call_id) is done:
                del self._notifying[call_id]

        task.add_done_callback(forget)

    async def _resolve(self, host: str, port: int, who: str) -> tuple[str, int] | None:
        # RFC 3263 §4.2 with an explicit or default port: the host's A/AAAA records. SRV and
        # NAPTR would need a DNS client; trunks are configured by address or plain host name.
        try:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            event(logger, "sip.unresolved_destination", logging.WARNING, call_id=who,
                  host=host, error=str(exc))
            return None
        return str(infos[0][4][0]), port

    async def _resolve_and_send(self, action: act.SendRequest) -> None:
        addr = await self._resolve(*action.addr, action.call_id)
        if addr is None:
            self._core().handle_sip(ev.TransactionTimeout(action.tx_key,
                                                          action.request.method, "transport"),
                                    self.loop.time())
            self.pump()
            return
        assert self.sip is not None
        self.sip.send_request(action.request, addr, action.transport)

    async def _resolve_and_keepalive(self, action: act.SendKeepalive) -> None:
        addr = await self._resolve(*action.addr, "keepalive")
        if addr is not None and self.sip is not None:
            self.sip.send_keepalive(addr, action.transport)

    # -- a ringing call -------------------------------------------------------------------------

    def _offer(self, action: act.OfferCall) -> None:
        call_id = action.call_id
        call = self._core().calls.get(call_id)
        if call is not None:
            self.observer.call_event(call_started(call, "inbound", time.time(),
                                                  call.extra.get("trunk") or None))
            if self.registry is not None:
                self.registry.record(call_id, call.state.value, sip_call_id=call.sip_call_id)
        if self.webhooks is None:
            self.spawn(self._auto_accept(call_id), f"auto-accept {call_id}")
            return
        core = self._core()

        def ringing() -> bool:
            call = core.calls.get(call_id)
            return call is not None and call.state is CallState.RINGING

        webhooks = self.webhooks

        async def offer() -> None:
            delivery = await webhooks.deliver(action.event, keep_trying=ringing)
            # No application can have the call (a receiver refused it, or none was
            # reachable): end the ringing now rather than at the accept timeout.
            if (status := delivery.sip_status) is not None and ringing():
                core.abandon(call_id, f"webhook not delivered ({', '.join(delivery.reasons)})",
                             self.loop.time(), status=status,
                             headers=[("Retry-After", "30")] if status == 503 else None)
                self.pump()

        self.spawn(offer(), f"webhook {call_id}")

    async def _auto_accept(self, call_id: str) -> None:
        try:
            await self.accept(call_id, dict(self.settings.default_session))
        except CallError as exc:
            event(logger, "call.auto_accept_failed", logging.WARNING, call_id=call_id,
                  error=exc.message)
            self._core().abandon(call_id, "auto-accept failed", self.loop.time(), status=500)
            self.pump()

    # -- CallControl ----------------------------------------------------------------------------

    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        core = self._core()
        if not core.check_accept(call_id, session):
            return
        try:  # refuse a bad config with a 400 now rather than a BYE after the 200
            validate_session(session)
        except ProtocolError as exc:
            raise InvalidCallRequest(exc.message, param=exc.param) from None
        core.accept(call_id, session, self.loop.time())
        self.pump()
        if self.registry is not None:
            self.registry.record(call_id, "accepted")
        engine, media = await self._prepare(call_id, session)
        self.media[call_id], self.engines[call_id] = media, engine
        answered = core.answer(call_id, media.local_port, self.loop.time())
        self.pump()
        if not answered:  # cancelled (or failed) while media was being set up
            self.media.pop(call_id, None)
            self.engines.pop(call_id, None)
            await media.close()
            await engine.aclose()
            state = core.ended.get(call_id, CallState.FAILED)
            raise CallStateConflict(f"Call {call_id} is {state.value}.")
        starting = self.starting.get(call_id)
        if starting is not None:
            try:
                await asyncio.shield(starting)
            except Exception as exc:
                raise CallFailed(f"Could not start the session: {exc}") from None

    @property
    def draining(self) -> bool:
        return self.core is not None and self.core.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._core().draining = value

    def knows(self, call_id: str) -> bool:
        """Whether this node holds (or lately held) the call: the cluster forwards the rest."""
        core = self.core
        return core is not None and (call_id in core.calls or call_id in core.ended)

    def trunks(self) -> list[dict[str, Any]]:
        registrations = self.core.registrations if self.core is not None else {}
        listed = []
        for name, trunk in self.settings.trunks.items():
            reg = registrations.get(name)
            registered = reg is not None and reg.state == "registered"
            listed.append({
                "name": name, "address": trunk.address, "registers": trunk.registers,
                "state": reg.state if reg is not None else "not_registering",
                "expires": reg.granted if reg is not None else 0,
                "failures": reg.failures if reg is not None else 0,
                "public_address": (f"{reg.public[0]}:{reg.public[1]}"
                                   if reg is not None and registered else None)})
        return listed

    async def dial(self, session: dict[str, Any], transport: dict[str, Any]) -> dict[str, Any]:
        core = self._core()
        plan = plan_call(transport, self.settings)
        core.check_dial(plan)
        try:
            validate_session(session)
        except ProtocolError as exc:
            raise InvalidCallRequest(exc.message, param=f"session.{exc.param}"
                                     if exc.param else "session") from None
        engine = await self._engine(session, "session.model")
        call_id = new_call_id()
        try:
            media = await self._open_media(call_id, local_ip_toward(plan.target.host,
                                                                    self.settings))
        except (PortsExhausted, OSError) as exc:
            await engine.aclose()
            raise CallFailed(f"No media for the call: {exc}", code="media_unavailable") from None
        try:
            call = core.dial(plan, session, media.local_port, self.loop.time(),
                             call_id=call_id)
        except BaseException:
            await media.close()
            await engine.aclose()
            raise
        self.media[call.id], self.engines[call.id] = media, engine
        self.observer.call_event(call_started(call, "outbound", time.time(), plan.trunk))
        if self.registry is not None:
            self.registry.record(call.id, call.state.value, sip_call_id=call.sip_call_id)
        # The session exists while the call rings, so observers may attach (?call_id=);
        # it starts when the callee answers, so the greeting is heard from the first word.
        rt = RealtimeSession(config=session, engine=engine, call_id=call.id,
                             output=self._line_output(call.id),
                             same_engine=self.settings.same_engine)
        self.live[call.id] = rt
        self.sessions.add(rt)
        self.pump()
        return {"id": call.id, "object": "realtime.call", "status": "dialing",
                "direction": "outbound", "destination": plan.destination, "trunk": plan.trunk,
                "created_at": int(time.time())}

    async def _prepare(self, call_id: str, session: dict[str, Any]) -> tuple[Engine,
                                                                                MediaStream]:
        """The engine and the media stream an answer needs; on failure the call is told."""
        core = self._core()
        try:
            engine = await self._engine(session, "model")
        except CallError:
            core.abandon(call_id, "engine unavailable", self.loop.time())
            self.pump()
            raise
        call = core.calls.get(call_id)
        try:
            media = await self._open_media(call_id, call.local_ip if call else "0.0.0.0")
        except (PortsExhausted, OSError) as exc:
            await engine.aclose()
            # Out of RTP ports or file descriptors is a capacity limit like max_calls: the
            # peer (or its proxy) should try another gateway or come back, not wait.
            reason = ("no free RTP port" if isinstance(exc, PortsExhausted) else
                      f"cannot open RTP sockets: {getattr(exc, 'strerror', None) or exc}")
            event(logger, "call.media_unavailable", logging.WARNING, call_id=call_id,
                  reason=reason, rtp_ports=f"{self.port_pool.low}-{self.port_pool.high}")
            core.abandon(call_id, reason, self.loop.time(), status=503,
                         headers=[("Retry-After", "10")])
            self.pump()
            raise CallFailed(f"{reason} ({exc})", code="media_unavailable") from None
        return engine, media

    async def _engine(self, session: dict[str, Any], param: str) -> Engine:
        """The session's engine. ``param`` names its model field in the request body
        (``model`` in an accept, ``session.model`` in a dial)."""
        model = session.get("model") or self.settings.default_model
        try:
            engine = await self.engine_factory(model)
        except ValueError as exc:
            raise InvalidCallRequest(str(exc), param=param) from None
        except Exception as exc:  # e.g. an upstream Realtime server that is down
            raise CallFailed(f"The model {model!r} is not available: {exc}") from None
        try:  # a setting the engine cannot carry out: 400 naming it, not a silent ignore
            check_engine(session, engine)
        except ProtocolError as exc:
            await engine.aclose()
            field = (exc.param or "").removeprefix("session.")
            raise InvalidCallRequest(exc.message, param=(param.removesuffix("model") + field
                                                         if field else None)) from None
        return engine

    async def _open_media(self, call_id: str, local_ip: str) -> MediaStream:
        s = self.settings
        bind_host = local_ip if s.sip_host not in ("0.0.0.0", "::") else s.sip_host
        return await MediaStream.open(
            bind_host=bind_host, port_pool=self.port_pool, tick=self.tick,
            symmetric_rtp=s.symmetric_rtp, jitter_min_ms=s.jitter_min_ms,
            jitter_max_ms=s.jitter_max_ms, media_timeout=s.media_timeout, call_id=call_id)

    async def _start_session(self, call_id: str, config: dict[str, Any]) -> None:
        media, engine = self.media[call_id], self.engines[call_id]
        rt = self.live.get(call_id)
        if rt is None:
            rt = RealtimeSession(config=config, engine=engine, call_id=call_id,
                                 output=self._line_output(call_id),
                                 same_engine=self.settings.same_engine)
            self.live[call_id] = rt
            self.sessions.add(rt)
        media.on_audio = rt.feed_audio
        media.on_dtmf = rt.dtmf
        # The negotiated codec fixes the engine's line format before it starts (an upstream
        # Realtime engine tells its server the format in its first session.update).
        self._line_audio(call_id)
        try:
            await rt.start()
        except Exception as exc:
            logger.exception("session start failed", extra={"call_id": call_id})
            self._core().session_failed(call_id, "session start failed", self.loop.time())
            self.pump()
            raise CallFailed(f"Could not start the session: {exc}") from None
        finally:
            self.starting.pop(call_id, None)
        call = self._core().calls.get(call_id)
        if call is not None:
            self.observer.call_event(call_answered(call, media, rt, self._line_audio(call_id),
                                                   time.time()))

    def _line_audio(self, call_id: str) -> AudioFormat:
        """The call's line audio as negotiated so far: known from the answer on, while the
        media is configured only once the ACK came."""
        call = self._core().calls.get(call_id)
        return line_audio(self.engines[call_id], call.negotiated if call else None)

    def _line_output(self, call_id: str) -> LineOutput:
        return LineOutput(self.media[call_id], lambda: self._line_audio(call_id))

    async def reject(self, call_id: str, status_code: int) -> None:
        self._core().reject(call_id, status_code, self.loop.time())
        self.pump()

    async def refer(self, call_id: str, target_uri: str) -> None:
        self._core().refer(call_id, target_uri, self.loop.time())
        self.pump()

    async def hangup(self, call_id: str) -> None:
        self._core().hangup(call_id, self.loop.time())
        self.pump()

    # -- the end of a call ----------------------------------------------------------------------

    async def _release(self, action: act.Release) -> None:
        """Free everything a finished call holds."""
        call_id = action.call_id
        if self.registry is not None:
            self.registry.ended(call_id, action.state.value)
        session = self.live.pop(call_id, None)
        engine = self.engines.pop(call_id, None)
        media = self.media.pop(call_id, None)
        if session is not None:
            self.sessions.remove(call_id)
            await session.close(action.reason)
        elif engine is not None:
            await engine.aclose()
        if media is not None:
            event(logger, "call.media_stats", call_id=call_id, **media.stats)
            await media.close()

    async def close(self) -> None:
        """Gateway shutdown: hang up every call, then wait for the releases."""
        if self.core is not None:
            self.core.shutdown(self.loop.time())
            self.pump()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
