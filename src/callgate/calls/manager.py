"""The calls a gateway has, and the call-control verbs (accept, reject, refer, hangup).

:class:`CallManager` implements :class:`callgate.calls.control.CallControl` for the REST API.
SIP events reach it through :mod:`callgate.calls.signalling`; it owns each call's media stream
and realtime session from accept to the end, and keeps a bounded memory of ended calls so the
verbs stay idempotent when a client retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from callgate.calls.call import Call
from callgate.calls.control import CallError, CallNotFound, CallStateConflict, InvalidCallRequest
from callgate.calls.state import CallState
from callgate.calls.webhook import WebhookSender, build_incoming_event
from callgate.cluster.registry import CallRegistry
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.log import event
from callgate.media.pacer import SendTick
from callgate.media.ports import PortPool, PortsExhausted
from callgate.media.srtp import new_crypto
from callgate.media.stream import MediaStream
from callgate.realtime import ProtocolError, validate_session
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.session import RealtimeSession
from callgate.sip.message import make_response
from callgate.sip.offer_answer import (
    CryptoSuite,
    NegotiationError,
    answer_offer,
    make_offer,
)

if TYPE_CHECKING:
    from callgate.calls.signalling import Signalling

logger = logging.getLogger("callgate.calls")

ENGINE_RATE = 24000
ENDED_MEMORY = 10_000  # ended calls remembered for idempotent replays of the verbs


class EngineFactory(Protocol):
    def __call__(self, model: str) -> Awaitable[Engine]: ...


class CallFailed(CallError):
    http_status = 500
    error_type = "server_error"
    code = "call_setup_failed"


class LineOutput:
    """The phone line as the realtime session's audio output (paced by the media stream)."""

    def __init__(self, media: MediaStream):
        self._media = media

    def play(self, pcm: bytes) -> None:
        self._media.send_audio(pcm)

    def clear(self) -> int:
        return self._media.clear_output()

    def queued_ms(self) -> int:
        return self._media.queued_ms


class CallManager:
    def __init__(self, settings: Settings, *, sessions: SessionRegistry,
                 engine_factory: EngineFactory, port_pool: PortPool, tick: SendTick,
                 webhooks: WebhookSender | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.sessions = sessions
        self.engine_factory = engine_factory
        self.port_pool = port_pool
        self.tick = tick
        self.webhooks = webhooks
        self.clock = clock
        self.signalling: Signalling | None = None  # set by Signalling itself
        self.calls: dict[str, Call] = {}
        self.ended: OrderedDict[str, CallState] = OrderedDict()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.registry: CallRegistry | None = None  # the cluster's, when there are several nodes
        self.draining = False  # on SIGTERM: calls in progress go on, new ones are refused

    # -- bookkeeping ------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self.calls)

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task failed", exc_info=task.exception(),
                         extra={"task": task.get_name()})

    def _sig(self) -> Signalling:
        assert self.signalling is not None, "signalling not attached"
        return self.signalling

    def lookup(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            if call_id in self.ended:
                raise CallStateConflict(f"Call {call_id} has already "
                                        f"{self.ended[call_id].value.replace('_', ' ')}.")
            raise CallNotFound(f"No call found with id {call_id}.", param="call_id")
        return call

    # -- a new call -------------------------------------------------------------------------

    def offer_call(self, call: Call) -> None:
        """A new INVITE is ringing: ask the application, or auto-accept without a webhook."""
        self.calls[call.id] = call
        if self.registry is not None:
            self.registry.record(call.id, call.state.value, sip_call_id=call.sip_call_id)
        call.arm("accept_timeout", self.settings.accept_timeout, self._accept_timeout, call)
        if self.webhooks is None:
            self.spawn(self._auto_accept(call), f"auto-accept {call.id}")
            return
        body = build_incoming_event(call.id, list(call.invite.headers),
                                    media_security=_media_security(call), now=self.clock())
        self.spawn(self.webhooks.deliver(body, keep_trying=lambda: call.state is CallState.RINGING),
                   f"webhook {call.id}")

    async def _auto_accept(self, call: Call) -> None:
        try:
            await self.accept(call.id, dict(self.settings.default_session))
        except CallError as exc:
            event(logger, "call.auto_accept_failed", logging.WARNING, call_id=call.id,
                  error=exc.message)
            if call.state is CallState.RINGING:
                self.finish_ringing(call, 500, CallState.FAILED, "auto-accept failed")

    def _accept_timeout(self, call: Call) -> None:
        if call.state is CallState.RINGING:
            self.finish_ringing(call, self.settings.accept_timeout_status, CallState.TIMED_OUT,
                                f"not accepted within {self.settings.accept_timeout:g}s")

    def finish_ringing(self, call: Call, status: int, state: CallState, reason: str,
                       headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the INVITE with a final error status and forget the call."""
        response = make_response(call.invite, status, to_tag=call.local_tag, headers=headers or [])
        self._sig().send_response(call, response)
        call.move(state, reason)
        self.spawn(self.release(call), f"release {call.id}")

    # -- CallControl ------------------------------------------------------------------------

    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        call = self.lookup(call_id)
        if call.state.is_up:
            if call.accepted_config == session:
                return  # a retried accept that already took effect
            raise CallStateConflict(f"Call {call_id} was already accepted.")
        if call.state is not CallState.RINGING:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}.")
        try:  # refuse a bad config with a 400 now rather than a BYE after the 200
            validate_session(session)
        except ProtocolError as exc:
            raise InvalidCallRequest(exc.message, param=exc.param) from None
        model = session.get("model") or self.settings.default_model
        try:
            engine = await self.engine_factory(model)
        except ValueError as exc:
            raise InvalidCallRequest(str(exc), param="model") from None
        except Exception as exc:  # e.g. an upstream Realtime server that is down
            raise CallFailed(f"The model {model!r} is not available: {exc}") from None
        media: MediaStream | None = None
        try:
            media = await MediaStream.open(
                bind_host=_bind_host(self.settings, call.local_ip), port_pool=self.port_pool,
                tick=self.tick, symmetric_rtp=self.settings.symmetric_rtp,
                jitter_min_ms=self.settings.jitter_min_ms,
                jitter_max_ms=self.settings.jitter_max_ms, call_id=call.id)
            if call.state is not CallState.RINGING:  # cancelled while we set up
                raise CallStateConflict(f"Call {call_id} is {call.state.value}.")
            body = self._local_sdp(call, media.local_port)
        except BaseException as exc:
            if media is not None:
                await media.close()
            await engine.aclose()
            if isinstance(exc, NegotiationError):  # checked when the INVITE came; not expected
                raise CallFailed(exc.reason) from None
            if isinstance(exc, PortsExhausted | OSError):
                # Out of RTP ports or file descriptors is a capacity limit like max_calls: the
                # caller (or its proxy) should try another gateway or come back, not wait for
                # a timeout.
                reason = ("no free RTP port" if isinstance(exc, PortsExhausted) else
                          f"cannot open RTP sockets: {exc.strerror or exc}")
                event(logger, "call.media_unavailable", logging.WARNING, call_id=call.id,
                      reason=reason, rtp_ports=f"{self.port_pool.low}-{self.port_pool.high}")
                if call.state is CallState.RINGING:
                    self.finish_ringing(call, 503, CallState.FAILED, reason,
                                        headers=[("Retry-After", "10")])
                raise CallFailed(f"{reason} ({exc})", code="media_unavailable") from None
            raise
        call.media, call.engine, call.accepted_config = media, engine, dict(session)
        response = make_response(
            call.invite, 200, to_tag=call.local_tag, body=body, content_type="application/sdp",
            headers=self._sig().answer_headers(call))
        self._sig().answered(call, response)
        call.move(CallState.ACCEPTED, "accepted")
        if self.registry is not None:
            self.registry.record(call.id, call.state.value)
        self._watch_media(call, -1)
        try:
            await self._start_session(call, session, engine, media)
        except Exception as exc:
            logger.exception("session start failed", extra={"call_id": call.id})
            self.end(call, "session start failed", send_bye=True)
            raise CallFailed(f"Could not start the session: {exc}") from None

    def _watch_media(self, call: Call, seen: int) -> None:
        """A caller that vanished without a BYE (crashed phone, lost NAT binding) would hold
        its call forever: end it once no RTP came for ``media_timeout`` seconds, unless the
        call is on hold and silence is what was asked for."""
        timeout = self.settings.media_timeout
        if timeout <= 0 or call.state.is_final or call.media is None:
            return
        received = call.media.session.packets_in
        listening = call.negotiated is not None and call.negotiated.direction in (
            "sendrecv", "recvonly")
        if received == seen and listening and call.state is CallState.ACTIVE:
            event(logger, "call.media_timeout", logging.WARNING, call_id=call.id,
                  seconds=timeout, packets_in=received)
            self.end(call, f"no RTP for {timeout:g}s", send_bye=True)
            return
        call.arm("media_watch", timeout, self._watch_media, call, received)

    def _local_sdp(self, call: Call, port: int) -> bytes:
        prefs = self.settings.codecs
        call.sdp_version += 1
        if call.offer is None:  # late offer: ours goes in the 200, the answer comes in the ACK
            call.local_sdp = make_offer(local_ip=call.local_ip, local_port=port,
                                        preferences=prefs, session_id=call.sdp_session_id,
                                        session_version=call.sdp_version)
            return call.local_sdp.to_bytes()
        sdp, negotiated = answer_offer(
            call.offer, local_ip=call.local_ip, local_port=port, preferences=prefs,
            session_id=call.sdp_session_id, session_version=call.sdp_version,
            make_crypto=_make_crypto)
        call.local_sdp, call.negotiated = sdp, negotiated
        return sdp.to_bytes()

    async def _start_session(self, call: Call, config: dict[str, Any], engine: Engine,
                             media: MediaStream) -> None:
        rt = RealtimeSession(config=config, engine=engine, call_id=call.id,
                             output=LineOutput(media))
        call.session = rt
        self.sessions.add(rt)
        media.on_audio = rt.feed_audio
        media.on_dtmf = rt.dtmf
        if call.negotiated is not None:
            media.start(call.negotiated, pcm_rate=ENGINE_RATE)
        await rt.start()

    async def reject(self, call_id: str, status_code: int) -> None:
        call = self.lookup(call_id) if call_id not in self.ended else None
        if call is None:
            if self.ended[call_id] is CallState.REJECTED:
                return
            raise CallStateConflict(f"Call {call_id} has already "
                                    f"{self.ended[call_id].value}.")
        if call.state is not CallState.RINGING:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only a ringing "
                                    "call can be rejected.")
        self.finish_ringing(call, status_code, CallState.REJECTED, f"rejected {status_code}")

    async def refer(self, call_id: str, target_uri: str) -> None:
        call = self.lookup(call_id)
        if not call.state.is_up or call.dialog is None:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only an answered "
                                    "call can be referred.")
        if call.refer_target == target_uri:
            return  # retried: the REFER is already on its way
        call.refer_target = target_uri
        self._sig().send_refer(call, target_uri)

    async def hangup(self, call_id: str) -> None:
        if call_id in self.ended:
            return  # already over: hanging up again changes nothing
        call = self.lookup(call_id)
        if call.state is CallState.RINGING:
            self.finish_ringing(call, 603, CallState.REJECTED, "hung up while ringing")
        else:
            self.end(call, "hangup requested", send_bye=True)

    # -- the end of a call ------------------------------------------------------------------

    def end(self, call: Call, reason: str, *, send_bye: bool) -> None:
        if call.state.is_final:
            return
        if send_bye and call.dialog is not None:
            self._sig().send_bye(call)
        call.move(CallState.ENDED, reason)
        self.spawn(self.release(call), f"release {call.id}")

    async def release(self, call: Call) -> None:
        """Free everything a finished call holds; safe to call more than once."""
        call.disarm()
        if self.calls.pop(call.id, None) is None:
            return
        self.ended[call.id] = call.state
        if self.registry is not None:
            self.registry.ended(call.id, call.state.value)
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)
        if self.signalling is not None:
            self.signalling.forget(call)
        if call.session is not None:
            self.sessions.remove(call.id)
            await call.session.close(call.end_reason or "call ended")
        elif call.engine is not None:
            await call.engine.aclose()
        if call.media is not None:
            event(logger, "call.media_stats", call_id=call.id, **call.media.stats)
            await call.media.close()

    async def close(self) -> None:
        """Gateway shutdown: hang up every call, then wait for the releases."""
        for call in list(self.calls.values()):
            if call.state is CallState.RINGING:
                self.finish_ringing(call, 503, CallState.FAILED, "gateway shutting down",
                                    headers=[("Retry-After", "30")])
            else:
                self.end(call, "gateway shutting down", send_bye=True)
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def _make_crypto(suite: str) -> CryptoSuite:
    return new_crypto(1, suite)


def _media_security(call: Call) -> str | None:
    if call.offer is None:
        return None
    audio = next((m for m in call.offer.media if m.media.lower() == "audio"), None)
    if audio is None:
        return None
    return "srtp" if "SAVP" in audio.proto.upper() else "rtp"


def _bind_host(settings: Settings, local_ip: str) -> str:
    return local_ip if settings.sip_host not in ("0.0.0.0", "::") else settings.sip_host

