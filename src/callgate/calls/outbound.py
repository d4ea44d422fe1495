"""Calls we place (the UAC side of RFC 3261 §13.2): INVITE with our offer through a trunk,
digest challenges answered once per nonce, 3xx redirects followed a bounded number of
times, 1xx early dialogs (RFC 3261 §12.1.2) and early media on request, CANCEL on hangup or
ring timeout (and ACK + BYE for a 2xx that crosses it), and the answer starting the session.
"""

from __future__ import annotations

import logging
from typing import Any

from callgate.calls import actions as act
from callgate.calls import progress
from callgate.calls.base import CoreBase
from callgate.calls.call import Call, new_call_id
from callgate.calls.control import CallError
from callgate.calls.dialplan import DialPlan
from callgate.calls.screening import ALLOW_HEADER, contact
from callgate.calls.session_timer import SessionTimer
from callgate.calls.state import CallState, Trigger
from callgate.log import event
from callgate.media.offer_answer import NegotiationError, accept_answer, make_offer
from callgate.sip import events as ev
from callgate.sip.dialog import Dialog
from callgate.sip.digest import authorization, choose_challenge
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    new_tag,
    parse_uri,
)
from callgate.sip.message import (
    new_call_id as new_sip_call_id,
)
from callgate.sip.sdp import SdpError, parse_sdp
from callgate.sip.transaction import client_key

logger = logging.getLogger("callgate.calls")

_DROPPED_ON_RETRY = frozenset({"via", "cseq", "authorization", "proxy-authorization"})


class TooManyCalls(CallError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "too_many_outbound_calls"


class Outbound(CoreBase):
    def check_dial(self, plan: DialPlan) -> None:
        """Refuse a call over the global or the trunk's limit of concurrent outbound calls."""
        outbound = [c for c in self.calls.values() if c.direction == "outbound"]
        if len(outbound) >= self.settings.max_outbound_calls:
            raise TooManyCalls(f"{len(outbound)} outbound calls are in progress, the most "
                               "this gateway places at once.")
        if plan.max_outbound is not None and plan.trunk is not None:
            on_trunk = sum(1 for c in outbound if c.extra["plan"].trunk == plan.trunk)
            if on_trunk >= plan.max_outbound:
                raise TooManyCalls(f"{on_trunk} outbound calls are in progress on trunk "
                                   f"'{plan.trunk}', its limit.", param="transport.trunk")

    def dial(self, plan: DialPlan, config: dict[str, Any], local_port: int, now: float, *,
             call_id: str | None = None) -> Call:
        """Place a call; media is already bound at ``local_port``."""
        self._now = now
        self.check_dial(plan)
        target = plan.target
        local_ip = self.local_ip(target.host)
        reg = self.registrations.get(plan.trunk or "")
        local_contact = reg.contact if reg is not None else contact(
            plan.username or self.settings.project_id, local_ip,
            self.contact_ports.get(target.transport, self.settings.sip_port), target.transport,
            secure=target.uri.scheme == "sips")
        call_id = call_id or new_call_id()
        offer = make_offer(local_ip=local_ip, local_port=local_port,
                           preferences=self.settings.codecs,
                           session_id=int(call_id[-8:], 16), session_version=1)
        local_tag = new_tag()
        invite = Request("INVITE", parse_uri(plan.request_uri), Headers([
            ("From", f"<{plan.caller}>;tag={local_tag}"), ("To", f"<{plan.to}>"),
            ("Call-ID", new_sip_call_id() + "@callgate"), ("CSeq", "1 INVITE"),
            ("Contact", local_contact), ("Allow", ALLOW_HEADER), ("Supported", "timer"),
            ("Max-Forwards", "70"), *plan.headers, ("Content-Type", "application/sdp")]),
            offer.to_bytes())
        call = Call(id=call_id, direction="outbound", invite=invite,
                    tx_key=ev.TxKey(False, "INVITE", ""), addr=(target.host, target.port),
                    transport=target.transport, local_tag=local_tag,
                    local_contact=local_contact, local_ip=local_ip, state=CallState.DIALING,
                    local_sdp=offer, sdp_version=1, local_port=local_port, config=dict(config))
        call.extra.update(plan=plan, redirects=0, nonces=set(), trunk=plan.trunk)
        call.observer = self.observer
        self.calls[call.id] = call
        self._send_invite(call, invite)
        self._arm(call, "ring", now + plan.ring_timeout)
        event(logger, "call.dialing", call_id=call.id, sip_call_id=call.sip_call_id,
              trunk=plan.trunk, destination=plan.destination,
              next_hop=f"{target.host}:{target.port}", transport=target.transport)
        return call

    def _send_invite(self, call: Call, invite: Request) -> None:
        self._by_invite.pop(call.tx_key, None)
        call.invite = invite
        call.tx_key = self._transmit(invite, call.addr, call.transport, call.id)
        self._by_invite[call.tx_key] = call

    def _retry_invite(self, call: Call, *, uri: str | None = None,
                      auth: tuple[str, str] | None = None) -> None:
        """The INVITE again with the next CSeq (RFC 3261 §8.1.3.4, §22.2): a new target
        after a redirect, or our credentials after a challenge."""
        old = call.invite
        items = [(n, v) for n, v in old.headers if n.lower() not in _DROPPED_ON_RETRY]
        items.insert(0, ("CSeq", f"{old.cseq.seq + 1} INVITE"))
        if auth is not None:
            items.append(auth)
        self._send_invite(call, Request("INVITE", parse_uri(uri) if uri else old.uri,
                                        Headers(items), old.body))

    # -- hanging up before the answer -----------------------------------------------------------

    def _end_early(self, call: Call, reason: str) -> None:
        if call.direction == "inbound":
            super()._end_early(call, reason)
        else:
            self._cancel(call, Trigger.CANCEL, reason)

    def _cancel(self, call: Call, trigger: Trigger, reason: str,
                status: int | None = None) -> None:
        """CANCEL our INVITE (RFC 3261 §9.1: same Request-URI, Call-ID, From, To, CSeq number
        and top Via) and forget the call; a 2xx that crosses it is ACKed and BYEd."""
        invite = call.invite
        headers = Headers([("Via", invite.headers.get("Via") or ""),
                           ("From", invite.headers.get("From") or ""),
                           ("To", invite.headers.get("To") or ""),
                           ("Call-ID", invite.call_id), ("CSeq", f"{invite.cseq.seq} CANCEL"),
                           ("Max-Forwards", "70")])
        cancel = Request("CANCEL", invite.uri, headers, b"")
        self._stamp(cancel)
        branch = invite.vias[0].branch or ""
        self._emit(act.SendRequest(call.id, cancel, call.addr, call.transport,
                                   client_key(branch, "CANCEL")))
        self._cancelled[call.tx_key] = call
        call.extra["sip_status"] = status
        call.move(trigger, reason)
        self._release(call)

    # -- answers to our INVITE ------------------------------------------------------------------

    def invite_response(self, rx: ev.ResponseReceived, now: float) -> bool:
        """A response to one of our INVITEs (True: it was one)."""
        crossed = self._cancelled.get(rx.tx_key)
        if crossed is not None:
            if 200 <= rx.response.status < 300:
                self._hang_up_crossed(crossed, rx.response)
            return True
        call = self._by_invite.get(rx.tx_key)
        if call is None or call.direction != "outbound":
            return False
        response, status = rx.response, rx.response.status
        if status < 200:
            self._provisional(call, response, now)
        elif status < 300:
            self._connected(call, response, now)
        elif self._retried(call, response):
            pass
        elif call.state.is_early:
            call.extra["sip_status"] = status
            call.move(Trigger.FAIL, f"{status} {response.reason}")
            self._release(call)
        return True

    def _retried(self, call: Call, response: Response) -> bool:
        """A redirect followed or a challenge answered: the INVITE went out again."""
        if 300 <= response.status < 400:
            return self._redirect(call, response)
        return response.status in (401, 407) and self._authenticate(call, response)

    def _early_dialog(self, call: Call, response: Response) -> Dialog:
        dialog = self.dialogs.get(call.sip_call_id, call.local_tag, response.to.tag or "")
        if dialog is None:
            dialog = Dialog.from_uac(call.invite, response, transport=call.transport,
                                     local_contact=call.local_contact)
            self.dialogs.add(dialog)
            self._by_dialog[dialog.id] = call
        return dialog

    def _provisional(self, call: Call, response: Response, now: float) -> None:
        if response.status == 100 or not call.state.is_early:
            return
        if response.to.tag:
            self._early_dialog(call, response)
        if call.state is CallState.DIALING:
            call.move(Trigger.PROGRESS, f"{response.status} {response.reason}")
            self._emit(act.Notify(call.id, progress.progress_event(
                progress.RINGING, call.id, now, sip_status=response.status)))
        plan: DialPlan = call.extra["plan"]
        if plan.early_media and response.body and call.negotiated is None:
            negotiated = self._read_answer(call, response)
            if negotiated:
                self._emit(act.ConfigureMedia(call.id, negotiated))

    def _read_answer(self, call: Call, response: Response) -> Any:
        assert call.local_sdp is not None
        try:
            call.negotiated = accept_answer(call.local_sdp, parse_sdp(response.body))
        except (SdpError, NegotiationError, ValueError) as exc:
            event(logger, "call.bad_answer", logging.WARNING, call_id=call.id, error=str(exc))
            return None
        return call.negotiated

    def _connected(self, call: Call, response: Response, now: float) -> None:
        if call.state.is_up or call.state.is_final:
            if call.dialog is not None and response.to.tag == call.dialog.remote_tag:
                # A retransmitted 2xx: its ACK was lost (RFC 3261 §13.2.2.4).
                self._send(call, call.dialog.create_ack(response.cseq.seq), *self._next_hop(call))
            return
        dialog = self._early_dialog(call, response)
        dialog.confirm(response)
        call.dialog = dialog
        self._send(call, dialog.create_ack(response.cseq.seq), *self._next_hop(call))
        call.extra["peer_allow"] = response.headers.get_all("Allow")
        call.timer = _timer_from(response)
        call.deadlines.pop("ring", None)
        call.move(Trigger.CONNECT, f"{response.status} {response.reason}")
        if (response.body and self._read_answer(call, response) is None) or \
                call.negotiated is None:
            self.end(call, "no usable SDP answer", now, send_bye=True)
            return
        call.extra["answered"] = True
        self._answered(call, now)
        self._media_up(call, now)
        assert call.config is not None
        self._emit(act.StartSession(call.id, call.config))
        self._emit(act.Notify(call.id, progress.progress_event(
            progress.ANSWERED, call.id, now, sip_status=response.status)))

    def _hang_up_crossed(self, call: Call, response: Response) -> None:
        dialog = Dialog.from_uac(call.invite, response, transport=call.transport,
                                 local_contact=call.local_contact)
        addr, transport = call.addr, call.transport
        self._stamp(ack := dialog.create_ack(response.cseq.seq))
        self._emit(act.SendAck(call.id, ack, addr, transport))
        self._transmit(dialog.create_request("BYE"), addr, transport, call.id)

    def _redirect(self, call: Call, response: Response) -> bool:
        """Follow a 3xx to its first sip:/sips: Contact, at most ``max_redirects`` times,
        still through the trunk (RFC 3261 §8.1.3.4)."""
        if call.extra["redirects"] >= self.settings.max_redirects or not call.state.is_early:
            return False
        try:
            targets = [c.uri for c in response.contacts]
        except SipParseError:
            return False
        uri = next((str(u) for u in targets if getattr(u, "scheme", "") in ("sip", "sips")),
                   None)
        if uri is None:
            return False
        call.extra["redirects"] += 1
        event(logger, "call.redirected", call_id=call.id, status=response.status, target=uri)
        self._retry_invite(call, uri=uri)
        return True

    def _authenticate(self, call: Call, response: Response) -> bool:
        plan: DialPlan = call.extra["plan"]
        chosen = choose_challenge(response)
        nonces: set[str] = call.extra["nonces"]
        if (chosen is None or not plan.username or plan.password is None
                or (plan.realm is not None and chosen.realm != plan.realm)
                or (chosen.nonce in nonces and not chosen.stale)):
            return False
        nonces.add(chosen.nonce)
        event(logger, "call.authenticating", call_id=call.id, status=response.status,
              realm=chosen.realm, algorithm=chosen.algorithm)
        value = authorization(chosen, method="INVITE", uri=str(call.invite.uri),
                              username=plan.username, password=plan.password,
                              body=call.invite.body)
        self._retry_invite(call, auth=(chosen.answer_header, value))
        return True


def _timer_from(response: Response) -> SessionTimer | None:
    """RFC 4028 §7.2: the 2xx says the interval and who refreshes."""
    raw = response.headers.get("Session-Expires")
    if raw is None:
        return None
    value, _, params = raw.partition(";")
    if not value.strip().isdigit():
        return None
    refresher = "uas" if "refresher=uas" in params.replace(" ", "").lower() else "uac"
    return SessionTimer(int(value.strip()), refresher, True)
