"""The calls core: every call's lifecycle in both directions, sans-IO.

Shaped like :class:`callgate.sip.endpoint.SipEndpoint` one layer up. Inputs are the SIP
endpoint's events (``handle_sip``) and the call-control verbs (``accept``, ``reject``,
``refer``, ``hangup``, ``dial``), each with ``now``; outputs are :mod:`callgate.calls.actions`
drained with ``next_action()``, and one deadline, ``get_timer()``/``handle_timer(now)``, for
every call's ring, session-refresh, glare, media and duration timers. A call's state changes
only through :meth:`Call.move` and the table in :mod:`callgate.calls.state`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from callgate.calls import actions as act
from callgate.calls.call import Call, new_call_id
from callgate.calls.control import CallNotFound, CallStateConflict
from callgate.calls.midcall import MidCall
from callgate.calls.screening import (
    ACCEPTED_TYPES,
    ALLOW_HEADER,
    ALLOWED,
    SUPPORTED,
    contact,
    media_security,
    new_crypto_key,
    refuse,
    screen_invite,
)
from callgate.calls.state import CallState, Trigger
from callgate.calls.webhook import build_incoming_event
from callgate.config import Settings
from callgate.log import event
from callgate.media.offer_answer import answer_offer as answer_sdp
from callgate.media.offer_answer import make_offer
from callgate.sip import events as ev
from callgate.sip.dialog import Dialog, DialogId, DialogSet, DialogState
from callgate.sip.events import Addr
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    make_response,
    new_branch,
    new_tag,
)
from callgate.sip.transaction import client_key
from callgate.sip.validate import check_request

logger = logging.getLogger("callgate.calls")

ENDED_MEMORY = 10_000  # ended calls remembered for idempotent replays of the verbs
#: RFC 3326 Reason for a call ended at the duration cap; Q.850 cause 102 is "recovery on
#: timer expiry".
MAX_DURATION_REASON = 'Q.850;cause=102;text="maximum call duration reached"'


class CallCore(MidCall):
    """All calls of one gateway. ``sent_by`` is the SIP endpoint's Via address per transport
    (shared, filled once the listeners are bound); ``contact_ports`` our SIP ports;
    ``local_ip(remote)`` the address to advertise towards ``remote``; ``trusted_hosts`` the
    hosts besides a dialog's own peer that in-dialog requests may be sent to (trunks)."""

    def __init__(self, settings: Settings, *, sent_by: Mapping[str, Addr],
                 contact_ports: Mapping[str, int], local_ip: Callable[[str], str],
                 trusted_hosts: Collection[str] = (), rng: random.Random | None = None) -> None:
        self.settings = settings
        self.sent_by = sent_by
        self.contact_ports = contact_ports
        self.local_ip = local_ip
        self.trusted_hosts = {host.lower() for host in trusted_hosts}
        self.rng = rng or random.Random()
        self.calls: dict[str, Call] = {}
        self.dialogs = DialogSet()
        self.ended: OrderedDict[str, CallState] = OrderedDict()
        self._by_dialog: dict[DialogId, Call] = {}
        self._by_invite: dict[ev.TxKey, Call] = {}
        self._pending: dict[ev.TxKey, tuple[Call, Request]] = {}
        self._actions: deque[act.Action] = deque()
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()

    # -- outputs ------------------------------------------------------------------------------

    def next_action(self) -> act.Action | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            call = self.calls[entry[2]]
            del call.deadlines[entry[3]]
            self._fire(call, entry[3], now)

    def _live(self, entry: tuple[float, int, str, str]) -> bool:
        call = self.calls.get(entry[2])
        return call is not None and call.deadlines.get(entry[3]) == entry[0]

    def _arm(self, call: Call, name: str, when: float) -> None:
        call.deadlines[name] = when
        heapq.heappush(self._heap, (when, next(self._seq), call.id, name))

    def _emit(self, action: act.Action) -> None:
        self._actions.append(action)

    # -- bookkeeping ----------------------------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self.calls)

    def lookup(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            if call_id in self.ended:
                raise CallStateConflict(f"Call {call_id} has already "
                                        f"{self.ended[call_id].value.replace('_', ' ')}.")
            raise CallNotFound(f"No call found with id {call_id}.", param="call_id")
        return call

    def _release(self, call: Call) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        self.ended[call.id] = call.state
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)
        if call.dialog is not None:
            call.dialog.terminate()
            self.dialogs.remove(call.dialog)
            self._by_dialog.pop(call.dialog.id, None)
        self._by_invite.pop(call.tx_key, None)
        for key in [k for k, (c, _) in self._pending.items() if c is call]:
            del self._pending[key]
        self._emit(act.Release(call.id, call.state, call.end_reason or "ended"))

    # -- the verbs ------------------------------------------------------------------------------

    def check_accept(self, call_id: str, config: dict[str, Any]) -> bool:
        """Whether accepting may go ahead (False: it already happened with this config)."""
        call = self.lookup(call_id)
        if call.direction == "outbound":
            raise CallStateConflict(f"Call {call_id} is an outbound call; it starts when the "
                                    "callee answers.")
        if call.state.is_up:
            if call.config == config:
                return False  # a retried accept that already took effect
            raise CallStateConflict(f"Call {call_id} was already accepted.")
        if call.state is not CallState.RINGING:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}.")
        return True

    def accept(self, call_id: str, config: dict[str, Any], now: float) -> None:
        """The application accepted: the shell now sets up media and engine, then calls
        :meth:`answer` (or :meth:`abandon`)."""
        if self.check_accept(call_id, config):
            call = self.calls[call_id]
            call.config = dict(config)
            call.move(Trigger.ACCEPT, "accept requested")

    def answer(self, call_id: str, local_port: int, now: float) -> bool:
        """Media is ready on ``local_port``: send the 2xx. False if the call went away."""
        call = self.calls.get(call_id)
        if call is None or call.state is not CallState.ANSWERING or call.dialog is None:
            return False
        call.local_port = local_port
        call.sdp_version += 1
        if call.offer is None:  # late offer: ours goes in the 200, the answer comes in the ACK
            call.local_sdp = make_offer(
                local_ip=call.local_ip, local_port=local_port, preferences=self.settings.codecs,
                session_id=call.sdp_session_id, session_version=call.sdp_version)
        else:
            call.local_sdp, call.negotiated = answer_sdp(
                call.offer, local_ip=call.local_ip, local_port=local_port,
                preferences=self.settings.codecs, session_id=call.sdp_session_id,
                session_version=call.sdp_version, make_crypto=new_crypto_key)
        headers = [("Contact", call.local_contact), ("Allow", ALLOW_HEADER),
                   ("Supported", ", ".join(sorted(SUPPORTED)))]
        headers += [("Record-Route", rr) for rr in call.invite.headers.get_all("Record-Route")]
        if call.timer is not None:
            headers += call.timer.response_headers()
        response = make_response(call.invite, 200, to_tag=call.local_tag,
                                 body=call.local_sdp.to_bytes(),
                                 content_type="application/sdp", headers=headers)
        self._respond(call.tx_key, response)
        call.dialog.confirm()  # the 2xx confirms the early dialog (RFC 3261 §12.1.1)
        call.move(Trigger.ANSWER, "200 sent")
        self._answered(call, now)
        assert call.config is not None
        self._emit(act.StartSession(call.id, call.config))
        return True

    def abandon(self, call_id: str, reason: str, now: float, *, status: int | None = None,
                headers: list[tuple[str, str]] | None = None) -> None:
        """Accepting failed. With ``status`` the INVITE is answered with it; without, the
        call rings on and the application may try again."""
        call = self.calls.get(call_id)
        if call is None or not call.state.is_early:
            return
        if status is not None:
            self._finish_early(call, status, Trigger.FAIL, reason, headers)
        elif call.state is CallState.ANSWERING:
            call.move(Trigger.ABANDON, reason)

    def reject(self, call_id: str, status: int, now: float) -> None:
        if call_id in self.ended and call_id not in self.calls:
            if self.ended[call_id] is CallState.REJECTED:
                return
            raise CallStateConflict(f"Call {call_id} has already {self.ended[call_id].value}.")
        call = self.lookup(call_id)
        if call.state is not CallState.RINGING or call.direction != "inbound":
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only a ringing "
                                    "call can be rejected.")
        self._finish_early(call, status, Trigger.REJECT, f"rejected {status}")

    def refer(self, call_id: str, target_uri: str, now: float) -> None:
        call = self.lookup(call_id)
        if not call.state.is_up or call.dialog is None:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only an answered "
                                    "call can be referred.")
        if call.refer_target == target_uri:
            return  # retried: the REFER is already on its way
        call.refer_target = target_uri
        # RFC 3515 §2.1: Refer-To carries the target verbatim; Referred-By names us.
        self._send_in_dialog(call, "REFER", headers=[
            ("Refer-To", f"<{target_uri}>"), ("Referred-By", call.local_contact)])
        event(logger, "sip.refer_sent", call_id=call.id, target=target_uri)

    def hangup(self, call_id: str, now: float) -> None:
        if call_id in self.ended and call_id not in self.calls:
            return  # already over: hanging up again changes nothing
        call = self.lookup(call_id)
        if call.state.is_early:
            self._end_early(call, "hung up before the answer")
        else:
            self.end(call, "hangup requested", now, send_bye=True)

    def session_failed(self, call_id: str, reason: str, now: float) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self.end(call, reason, now, send_bye=True)

    def media_activity(self, call_id: str, packets_in: int, now: float) -> None:
        """The answer to :class:`CheckMedia`. A peer that vanished without a BYE (crashed
        phone, lost NAT binding) would hold its call forever: end it once no RTP came for
        ``media_timeout`` seconds, unless it is on hold and silence is what was asked for."""
        call = self.calls.get(call_id)
        if call is None or call.state is not CallState.ACTIVE:
            return
        timeout = self.settings.media_timeout
        listening = call.negotiated is not None and call.negotiated.direction in (
            "sendrecv", "recvonly")
        if packets_in == call.media_seen and listening:
            event(logger, "call.media_timeout", logging.WARNING, call_id=call.id,
                  seconds=timeout, packets_in=packets_in)
            self.end(call, f"no RTP for {timeout:g}s", now, send_bye=True)
            return
        call.media_seen = packets_in
        self._arm(call, "media", now + timeout)

    def shutdown(self, now: float) -> None:
        """Gateway shutdown: every call is hung up."""
        for call in list(self.calls.values()):
            if call.state.is_early and call.direction == "inbound":
                self._finish_early(call, 503, Trigger.FAIL, "gateway shutting down",
                                   [("Retry-After", "30")])
            elif call.state.is_early:
                self._end_early(call, "gateway shutting down")
            else:
                self.end(call, "gateway shutting down", now, send_bye=True)

    # -- the end of a call ----------------------------------------------------------------------

    def end(self, call: Call, reason: str, now: float, *, send_bye: bool,
            headers: list[tuple[str, str]] | None = None) -> None:
        """End an answered call (BYE unless the peer already said goodbye)."""
        if call.state.is_final or call.id not in self.calls:
            return
        if call.state.is_early:
            self._end_early(call, reason)
            return
        if send_bye and call.dialog is not None:
            self._send_in_dialog(call, "BYE", headers=headers)
        call.move(Trigger.END, reason)
        self._release(call)

    def _end_early(self, call: Call, reason: str) -> None:
        self._finish_early(call, 603, Trigger.REJECT, reason)

    def _finish_early(self, call: Call, status: int, trigger: Trigger, reason: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
        """Answer our pending INVITE server transaction with ``status`` and forget the call."""
        response = make_response(call.invite, status, to_tag=call.local_tag,
                                 headers=headers or [])
        self._respond(call.tx_key, response)
        call.move(trigger, reason)
        self._release(call)

    # -- sending --------------------------------------------------------------------------------

    def _stamp(self, message: Request | Response) -> None:
        header = "Server" if isinstance(message, Response) else "User-Agent"
        if header not in message.headers:
            message.headers.add(header, self.settings.user_agent)

    def _respond(self, tx_key: ev.TxKey, response: Response) -> None:
        self._stamp(response)
        self._emit(act.SendResponse(tx_key, response))

    def _reply(self, rx: ev.RequestReceived, response: Response) -> None:
        self._respond(rx.tx_key, response)

    def _send_in_dialog(self, call: Call, method: str, *, body: bytes = b"",
                        content_type: str | None = None,
                        headers: list[tuple[str, str]] | None = None) -> None:
        assert call.dialog is not None
        request = call.dialog.create_request(method, body=body, content_type=content_type,
                                             headers=headers)
        if body and method in ("INVITE", "UPDATE"):
            call.offering = True
        self._send(call, request, *self._next_hop(call))

    def _send(self, call: Call, request: Request, addr: Addr, transport: str) -> None:
        self._stamp(request)
        if request.method == "ACK":
            self._emit(act.SendAck(call.id, request, addr, transport))
            return
        # The Via is ours to write so that the transaction key is known before it is sent.
        host, port = self.sent_by.get(transport) or self.sent_by.get(call.transport) or \
            ("0.0.0.0", 0)
        branch = new_branch()
        host = f"[{host}]" if ":" in host else host
        request.headers = Headers([("Via", f"SIP/2.0/{transport.upper()} {host}:{port}"
                                           f";branch={branch};rport"), *request.headers])
        key = client_key(branch, request.method)
        self._pending[key] = (call, request)
        self._emit(act.SendRequest(call.id, request, addr, transport, key))

    def _next_hop(self, call: Call) -> tuple[Addr, str]:
        """Where an in-dialog request goes. Over the transport and to the address the dialog
        was established on, unless its route names that same host or a trusted one (a
        trunk): a Contact or Record-Route must not make us connect to an arbitrary host."""
        assert call.dialog is not None
        try:
            host, port, transport = call.dialog.next_hop()
        except ValueError:
            return call.addr, call.transport
        if transport == call.transport != "udp":
            # Reuse the established connection rather than opening one towards a Contact,
            # which is often unreachable behind NAT (the reasoning of RFC 5923).
            return call.addr, transport
        bare = host.strip("[]").lower()
        if bare != call.addr[0].lower() and bare not in self.trusted_hosts:
            if (bare, port) != (call.addr[0], call.addr[1]):
                event(logger, "sip.next_hop_refused", logging.INFO, call_id=call.id,
                      host=host, used=f"{call.addr[0]}:{call.addr[1]}")
            return call.addr, call.transport
        return (bare, port or (5061 if transport == "tls" else 5060)), transport

    # -- SIP events -----------------------------------------------------------------------------

    def handle_sip(self, event_: ev.Event, now: float) -> None:
        if isinstance(event_, ev.RequestReceived):
            self._on_request(event_, now)
        elif isinstance(event_, ev.AckReceived):
            self._on_ack(event_.request, now)
        elif isinstance(event_, ev.CancelReceived):
            call = self._by_invite.get(event_.invite_tx_key)
            # Once the 2xx is out the CANCEL has no effect (RFC 3261 §9.2).
            if call is not None and call.state in (CallState.RINGING, CallState.ANSWERING):
                self._finish_early(call, 487, Trigger.CANCEL, "caller cancelled")
        elif isinstance(event_, ev.ResponseReceived):
            self._on_response(event_, now)
        elif isinstance(event_, ev.TransactionTimeout):
            self._on_timeout(event_, now)
        elif isinstance(event_, ev.AckTimeout):
            call = self._by_dialog.get(DialogId(event_.call_id, event_.local_tag,
                                                event_.remote_tag))
            if call is not None:
                self.end(call, "2xx never acknowledged (Timer H)", now, send_bye=True)
        elif isinstance(event_, ev.TransactionTerminated):
            self._pending.pop(event_.tx_key, None)

    def _on_request(self, rx: ev.RequestReceived, now: float) -> None:
        request = rx.request
        error = check_request(request, project_id=self.settings.project_id,
                              supported=SUPPORTED, allowed_methods=ALLOWED,
                              accepted_types=ACCEPTED_TYPES)
        if error is not None:
            self._reply(rx, error)
            event(logger, "sip.request_refused", sip_call_id=_safe_call_id(request),
                  method=request.method, status=error.status)
            return
        if request.to.tag:
            self._in_dialog(rx, now)
        elif request.method == "INVITE":
            self._new_invite(rx, now)
        elif request.method == "OPTIONS":
            self._reply(rx, make_response(request, 200, to_tag=new_tag(), headers=[
                ("Allow", ALLOW_HEADER), ("Accept", "application/sdp"),
                ("Supported", ", ".join(sorted(SUPPORTED)))]))
        else:
            self._reply(rx, refuse(request, 481, "Call/Transaction Does Not Exist"))

    def _new_invite(self, rx: ev.RequestReceived, now: float) -> None:
        request = rx.request
        if len(self.calls) >= self.settings.max_calls:
            self._reply(rx, refuse(request, 503, "Service Unavailable", [("Retry-After", "10")]))
            event(logger, "sip.overload", sip_call_id=request.call_id, calls=len(self.calls))
            return
        local_ip = self.local_ip(rx.addr[0])
        screened = screen_invite(request, self.settings, local_ip=local_ip)
        if isinstance(screened, Response):
            self._reply(rx, screened)
            return
        port = self.contact_ports.get(rx.transport, self.settings.sip_port)
        call = Call(id=new_call_id(), direction="inbound", invite=request, tx_key=rx.tx_key,
                    addr=rx.addr, transport=rx.transport, local_tag=new_tag(),
                    local_contact=contact(self.settings.project_id, local_ip, port,
                                          rx.transport, secure=request.uri.scheme == "sips"),
                    local_ip=local_ip, offer=screened.offer, timer=screened.timer)
        self.calls[call.id] = call
        self._by_invite[rx.tx_key] = call
        event(logger, "call.incoming", call_id=call.id, sip_call_id=request.call_id,
              peer=f"{rx.addr[0]}:{rx.addr[1]}", transport=rx.transport,
              from_=request.headers.get("From"), to=request.headers.get("To"))
        ringing = make_response(request, 180, to_tag=call.local_tag, headers=[
            ("Contact", call.local_contact), ("Allow", ALLOW_HEADER)])
        self._respond(rx.tx_key, ringing)
        # The 180 with our tag makes an early dialog (§12.1.1): a BYE on it ends the call.
        call.dialog = Dialog.from_uas(request, ringing, transport=rx.transport,
                                      local_contact=call.local_contact)
        self.dialogs.add(call.dialog)
        self._by_dialog[call.dialog.id] = call
        self._arm(call, "ring", now + self.settings.accept_timeout)
        self._emit(act.OfferCall(call.id, build_incoming_event(
            call.id, list(request.headers), media_security=media_security(call.offer),
            now=now)))

    def _in_dialog(self, rx: ev.RequestReceived, now: float) -> None:
        request = rx.request
        dialog = self.dialogs.for_request(request)
        call = self._by_dialog.get(dialog.id) if dialog is not None else None
        if dialog is None or call is None:
            self._reply(rx, refuse(request, 481, "Call/Transaction Does Not Exist"))
            return
        if dialog.state is DialogState.EARLY:
            if request.method == "BYE":
                # The caller gave up on the early dialog: end the INVITE too (RFC 3261 §15).
                self._reply(rx, make_response(request, 200))
                self._finish_early(call, 487, Trigger.CANCEL, "BYE while ringing")
            else:
                self._reply(rx, refuse(request, 481, "Call/Transaction Does Not Exist"))
            return
        status = dialog.receive_request(request)
        if status is not None:
            self._reply(rx, make_response(request, status))
            return
        self.in_dialog_request(call, rx, now)

    def _on_ack(self, ack: Request, now: float) -> None:
        dialog = self.dialogs.for_request(ack)
        call = self._by_dialog.get(dialog.id) if dialog is not None else None
        if call is None or call.state is not CallState.ACCEPTED:
            return
        if not self.late_answer(call, ack, now):
            return
        call.move(Trigger.ACK, "ACK received")
        self._media_up(call, now)

    def _media_up(self, call: Call, now: float) -> None:
        """The call is confirmed both ways: media may flow, and its silence is watched."""
        if call.negotiated is not None:
            self._emit(act.ConfigureMedia(call.id, call.negotiated))
        if self.settings.media_timeout > 0:
            self._arm(call, "media", now + self.settings.media_timeout)

    def _answered(self, call: Call, now: float) -> None:
        self.arm_session_timer(call, now)
        if self.settings.max_call_seconds > 0:
            self._arm(call, "max", now + self.settings.max_call_seconds)

    def _on_response(self, rx: ev.ResponseReceived, now: float) -> None:
        entry = self._pending.get(rx.tx_key)
        if entry is None or rx.response.status < 200:
            return
        call, request = entry
        self.on_dialog_response(call, request, rx.response, now)

    def _on_timeout(self, timeout: ev.TransactionTimeout, now: float) -> None:
        entry = self._pending.pop(timeout.tx_key, None)
        if entry is None:
            return
        call, request = entry
        event(logger, "sip.request_timeout", logging.WARNING, call_id=call.id,
              method=request.method, timer=timeout.timer)
        if request.method in ("INVITE", "UPDATE"):
            call.offering = False
        if request.method != "BYE":
            self.end(call, f"{request.method} timed out", now, send_bye=False)

    # -- timers ---------------------------------------------------------------------------------

    def _fire(self, call: Call, name: str, now: float) -> None:
        if name == "ring":
            if call.state is CallState.RINGING:
                self._finish_early(call, self.settings.accept_timeout_status, Trigger.TIMEOUT,
                                   f"not accepted within {self.settings.accept_timeout:g}s")
        elif name == "session":
            self.session_timer_fired(call, now)
        elif name == "glare":
            self.refresh(call)
        elif name == "media":
            self._emit(act.CheckMedia(call.id))
        elif name == "max":
            event(logger, "call.max_duration", call_id=call.id,
                  seconds=self.settings.max_call_seconds)
            self.end(call, f"maximum call duration {self.settings.max_call_seconds:g}s", now,
                     send_bye=True, headers=[("Reason", MAX_DURATION_REASON)])


def _safe_call_id(request: Request) -> str | None:
    try:
        return request.call_id
    except SipParseError:
        return None
