"""Calls that come in: a new INVITE rings, the application accepts (media and engine are
set up by the shell meanwhile) and the 2xx goes out, or it rejects; the ACK confirms."""

from __future__ import annotations

import logging
from typing import Any

from callgate.calls import actions as act
from callgate.calls.base import CoreBase
from callgate.calls.call import Call, new_call_id
from callgate.calls.control import CallStateConflict
from callgate.calls.screening import (
    ALLOW_HEADER,
    SUPPORTED,
    contact,
    media_security,
    new_crypto_key,
    refuse,
    screen_invite,
)
from callgate.calls.state import CallState, Trigger
from callgate.calls.webhook import build_incoming_event
from callgate.log import event
from callgate.media.offer_answer import NegotiationError, accept_answer, make_offer
from callgate.media.offer_answer import answer_offer as answer_sdp
from callgate.sip import events as ev
from callgate.sip.dialog import Dialog
from callgate.sip.message import Request, Response, make_response, new_tag
from callgate.sip.sdp import SdpError, parse_sdp

logger = logging.getLogger("callgate.calls")


class Inbound(CoreBase):
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
        self._now = now
        if self.check_accept(call_id, config):
            call = self.calls[call_id]
            call.config = dict(config)
            call.move(Trigger.ACCEPT, "accept requested")

    def answer(self, call_id: str, local_port: int, now: float) -> bool:
        """Media is ready on ``local_port``: send the 2xx. False if the call went away."""
        self._now = now
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
        self._now = now
        call = self.calls.get(call_id)
        if call is None or not call.state.is_early:
            return
        if status is not None:
            self._finish_early(call, status, Trigger.FAIL, reason, headers)
        elif call.state is CallState.ANSWERING:
            call.move(Trigger.ABANDON, reason)

    def reject(self, call_id: str, status: int, now: float) -> None:
        self._now = now
        if call_id in self.ended and call_id not in self.calls:
            if self.ended[call_id] is CallState.REJECTED:
                return
            raise CallStateConflict(f"Call {call_id} has already {self.ended[call_id].value}.")
        call = self.lookup(call_id)
        if call.state is not CallState.RINGING or call.direction != "inbound":
            raise CallStateConflict(f"Call {call_id} is {call.state.value}; only a ringing "
                                    "call can be rejected.")
        self._finish_early(call, status, Trigger.REJECT, f"rejected {status}")

    def _new_invite(self, rx: ev.RequestReceived, now: float, trunk: str) -> None:
        request = rx.request
        if self.draining or len(self.calls) >= self.settings.max_calls:
            self._reply(rx, refuse(request, 503, "Service Unavailable", [("Retry-After", "10")]))
            event(logger, "sip.overload", sip_call_id=request.call_id, calls=len(self.calls))
            self._refused(503, "max_calls")
            return
        local_ip = self.local_ip(rx.addr[0])
        screened = screen_invite(request, self.settings, local_ip=local_ip)
        if isinstance(screened, Response):
            self._reply(rx, screened)
            self._refused(screened.status, "no_acceptable_media" if screened.status == 488
                          else "invalid_request")
            return
        port = self.contact_ports.get(rx.transport, self.settings.sip_port)
        call = Call(id=new_call_id(), direction="inbound", invite=request, tx_key=rx.tx_key,
                    addr=rx.addr, transport=rx.transport, local_tag=new_tag(),
                    local_contact=contact(self.settings.project_id, local_ip, port,
                                          rx.transport, secure=request.uri.scheme == "sips"),
                    local_ip=local_ip, offer=screened.offer, timer=screened.timer)
        call.extra["trunk"] = trunk
        call.observer = self.observer
        self.calls[call.id] = call
        self._by_invite[rx.tx_key] = call
        event(logger, "call.incoming", call_id=call.id, sip_call_id=request.call_id,
              trunk=trunk or None,
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

    def _on_ack(self, ack: Request, now: float) -> None:
        dialog = self.dialogs.for_request(ack)
        call = self._by_dialog.get(dialog.id) if dialog is not None else None
        if call is None or call.state is not CallState.ACCEPTED:
            return
        if not self.late_answer(call, ack, now):
            return
        call.move(Trigger.ACK, "ACK received")
        self._media_up(call, now)

    def late_answer(self, call: Call, ack: Request, now: float) -> bool:
        """Late offer: the answer to the offer in our 2xx arrives in the ACK (RFC 3264 §5,
        RFC 3261 §13.2.1). False when it is unusable: the call has been ended."""
        if call.negotiated is not None or call.local_sdp is None:
            return True
        try:
            call.negotiated = accept_answer(call.local_sdp, parse_sdp(ack.body))
        except (SdpError, NegotiationError, ValueError) as exc:
            event(logger, "call.bad_answer_in_ack", logging.WARNING, call_id=call.id,
                  error=str(exc))
            self.end(call, "no usable answer in the ACK", now, send_bye=True)
            return False
        return True
