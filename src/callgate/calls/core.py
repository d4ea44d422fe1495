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
import logging

from callgate.calls import actions as act
from callgate.calls.call import Call
from callgate.calls.control import CallStateConflict
from callgate.calls.inbound import Inbound
from callgate.calls.midcall import MidCall
from callgate.calls.outbound import Outbound
from callgate.calls.screening import (
    ACCEPTED_TYPES,
    ALLOW_HEADER,
    ALLOWED,
    SUPPORTED,
    refuse,
)
from callgate.calls.state import CallState, Trigger
from callgate.calls.trunking import Trunking
from callgate.log import event
from callgate.sip import events as ev
from callgate.sip.dialog import DialogId, DialogState
from callgate.sip.message import (
    Request,
    SipParseError,
    make_response,
    new_tag,
)
from callgate.sip.validate import check_request

logger = logging.getLogger("callgate.calls")

#: RFC 3326 Reason for a call ended at the duration cap; Q.850 cause 102 is "recovery on
#: timer expiry".
MAX_DURATION_REASON = 'Q.850;cause=102;text="maximum call duration reached"'


class CallCore(Inbound, Outbound, Trunking, MidCall):
    """All calls of one gateway (constructor: :class:`callgate.calls.base.CoreBase`)."""

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        times = [t for t in (self._call_timer(), self.trunk_deadline()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._live(entry):
                continue
            call = self.calls[entry[2]]
            del call.deadlines[entry[3]]
            self._fire(call, entry[3], now)
        self.trunk_timers(now)

    def _fire(self, call: Call, name: str, now: float) -> None:
        if name == "ring" and call.direction == "outbound":
            if call.state.is_early:
                timeout = call.extra["plan"].ring_timeout
                self._cancel(call, Trigger.TIMEOUT, f"not answered within {timeout:g}s", 408)
        elif name == "ring":
            if call.state is CallState.RINGING:
                self._finish_early(call, self.settings.accept_timeout_status, Trigger.TIMEOUT,
                                   f"not accepted within {self.settings.accept_timeout:g}s")
        elif name == "session":
            self.session_timer_fired(call, now)
        elif name == "glare":
            self.refresh(call)
        elif name == "refer":
            self.transfer_failed(call, None, "no final NOTIFY within "
                                 f"{self.settings.refer_timeout:g}s")
        elif name == "media":
            self._emit(act.CheckMedia(call.id))
        elif name == "max":
            event(logger, "call.max_duration", call_id=call.id,
                  seconds=self.settings.max_call_seconds)
            self.end(call, f"maximum call duration {self.settings.max_call_seconds:g}s", now,
                     send_bye=True, headers=[("Reason", MAX_DURATION_REASON)])

    # -- the verbs ------------------------------------------------------------------------------

    def refer(self, call_id: str, target_uri: str, now: float) -> None:
        call = self.lookup(call_id)
        if not call.state.is_up or call.dialog is None:
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only an answered "
                                    "call can be referred.")
        if call.refer_target == target_uri:
            return  # retried: the REFER is already on its way
        if call.refer_target is not None:
            raise CallStateConflict(f"Call {call_id} is already being transferred to "
                                    f"{call.refer_target}; wait for its outcome.")
        call.refer_target = target_uri
        self._arm(call, "refer", now + self.settings.refer_timeout)
        # RFC 3515 §2.1: Refer-To carries the target verbatim; Referred-By names us.
        self._send_in_dialog(call, "REFER", headers=[
            ("Refer-To", f"<{target_uri}>"), ("Referred-By", call.local_contact)])
        event(logger, "sip.refer_sent", call_id=call.id, target=target_uri)

    def hangup(self, call_id: str, now: float) -> None:
        self._now = now
        if call_id in self.ended and call_id not in self.calls:
            return  # already over: hanging up again changes nothing
        call = self.lookup(call_id)
        if call.state.is_early:
            self._end_early(call, "hung up before the answer")
        else:
            self.end(call, "hangup requested", now, send_bye=True)

    def session_failed(self, call_id: str, reason: str, now: float) -> None:
        self._now = now
        call = self.calls.get(call_id)
        if call is not None:
            self.end(call, reason, now, send_bye=True)

    def media_activity(self, call_id: str, packets_in: int, now: float) -> None:
        """The answer to :class:`CheckMedia`. A peer that vanished without a BYE (crashed
        phone, lost NAT binding) would hold its call forever: end it once no RTP came for
        ``media_timeout`` seconds, unless it is on hold and silence is what was asked for."""
        self._now = now
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
        self._now = now
        for call in list(self.calls.values()):
            if call.state.is_early and call.direction == "inbound":
                self._finish_early(call, 503, Trigger.FAIL, "gateway shutting down",
                                   [("Retry-After", "30")])
            elif call.state.is_early:
                self._end_early(call, "gateway shutting down")
            else:
                self.end(call, "gateway shutting down", now, send_bye=True)

    # -- SIP events -----------------------------------------------------------------------------

    def handle_sip(self, event_: ev.Event, now: float) -> None:
        self._now = now
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
            self._trunk_pending.pop(event_.tx_key, None)
            self._cancelled.pop(event_.tx_key, None)
            self._pending.pop(event_.tx_key, None)

    def _on_request(self, rx: ev.RequestReceived, now: float) -> None:
        request = rx.request
        trunk: str | None = ""
        if request.method == "INVITE" and not request.to.tag:
            # Strangers are refused before they learn anything else about us.
            trunk = self.admit(rx)
            if trunk is None:
                return
        # A trunk's call names its own Request-URI user (a DID, the user we registered as);
        # callers that no trunk vouches for must name the project.
        project_id = None if trunk or getattr(request.uri, "user", None) in \
            self.contact_users else self.settings.project_id
        error = check_request(request, project_id=project_id,
                              supported=SUPPORTED, allowed_methods=ALLOWED,
                              accepted_types=ACCEPTED_TYPES)
        if error is not None:
            self._reply(rx, error)
            event(logger, "sip.request_refused", sip_call_id=_safe_call_id(request),
                  method=request.method, status=error.status)
            if request.method == "INVITE" and not request.to.tag:
                self._refused(error.status, "invalid_request")
            return
        if request.to.tag:
            self._in_dialog(rx, now)
        elif request.method == "INVITE" and trunk is not None:
            self._new_invite(rx, now, trunk)
        elif request.method == "OPTIONS":
            # 503 while draining: a dispatcher's probe moves new calls to other nodes.
            self._reply(rx, make_response(request, 503 if self.draining else 200,
                                          to_tag=new_tag(), headers=[
                ("Allow", ALLOW_HEADER), ("Accept", "application/sdp"),
                ("Supported", ", ".join(sorted(SUPPORTED)))]))
        else:
            self._reply(rx, refuse(request, 481, "Call/Transaction Does Not Exist"))

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

    def _on_response(self, rx: ev.ResponseReceived, now: float) -> None:
        if self.trunk_response(rx, now) or self.invite_response(rx, now):
            return
        entry = self._pending.get(rx.tx_key)
        if entry is None or rx.response.status < 200:
            return
        call, request = entry
        self.on_dialog_response(call, request, rx.response, now)

    def _on_timeout(self, timeout: ev.TransactionTimeout, now: float) -> None:
        if self.trunk_timeout(timeout, now):
            return
        dialled = self._by_invite.get(timeout.tx_key)
        if dialled is not None and dialled.direction == "outbound" and dialled.state.is_early:
            dialled.extra["sip_status"] = 408
            dialled.move(Trigger.FAIL, f"no final answer to the INVITE (timer {timeout.timer})")
            self._release(dialled)
            return
        entry = self._pending.pop(timeout.tx_key, None)
        if entry is None:
            return
        call, request = entry
        event(logger, "sip.request_timeout", logging.WARNING, call_id=call.id,
              method=request.method, timer=timeout.timer)
        if request.method in ("INVITE", "UPDATE"):
            call.offering = False
        if request.method == "REFER":
            # The transfer failed; the caller may still be there, and the media timeout ends
            # the call if not.
            self.transfer_failed(call, 408, f"no answer to the REFER (timer {timeout.timer})")
        elif request.method != "BYE":
            self.end(call, f"{request.method} timed out", now, send_bye=False)


def _safe_call_id(request: Request) -> str | None:
    try:
        return request.call_id
    except SipParseError:
        return None
