"""The SIP user-agent server: turns endpoint events into call-lifecycle steps and back.

New INVITEs are checked (RFC 3261 §8.2), their offer tried (RFC 3264) and their session timer
negotiated (RFC 4028) before anything rings; then 180 goes out and the call is offered to the
application through :class:`callgate.calls.manager.CallManager`. In-dialog requests (ACK, BYE,
re-INVITE, UPDATE, INFO, NOTIFY) and the answers to our own requests (BYE, REFER, refreshes)
land here too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

from callgate.calls.call import Call, new_call_id
from callgate.calls.manager import ENGINE_RATE, CallManager
from callgate.calls.session_timer import IntervalTooSmall, SessionTimer, negotiate
from callgate.calls.state import CallState
from callgate.log import event
from callgate.media.dtmf import parse_dtmf_relay
from callgate.sip import events as ev
from callgate.sip.dialog import Dialog, DialogSet
from callgate.sip.message import Request, Response, SipParseError, make_response, new_tag
from callgate.sip.offer_answer import NegotiationError, accept_answer, answer_offer
from callgate.sip.sdp import SdpError, parse_sdp
from callgate.sip.transport import SipTransportManager, is_ip
from callgate.sip.validate import check_request

logger = logging.getLogger("callgate.sip")

ALLOWED = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "NOTIFY"})
SUPPORTED = frozenset({"timer"})
ACCEPTED_TYPES = frozenset({"application/sdp", "application/dtmf-relay", "application/dtmf",
                            "message/sipfrag"})
ALLOW_HEADER = ", ".join(sorted(ALLOWED))


class Signalling:
    def __init__(self, calls: CallManager, sip: SipTransportManager, *,
                 contact_ports: dict[str, int]) -> None:
        self.calls = calls
        self.sip = sip
        self.settings = calls.settings
        self.contact_ports = contact_ports
        self.dialogs = DialogSet()
        self.by_dialog: dict[tuple[str, str], Call] = {}   # (Call-ID, our tag) -> call
        self.by_invite: dict[ev.TxKey, Call] = {}
        self.pending: dict[ev.TxKey, tuple[Call, Request]] = {}  # our requests in flight
        self.offering: set[str] = set()  # calls with our SDP offer awaiting its answer
        calls.signalling = self

    # -- sending ----------------------------------------------------------------------------

    def send_response(self, call: Call, response: Response) -> None:
        self._stamp(response)
        self.sip.send_response(call.tx_key, response)

    def answer_headers(self, call: Call) -> list[tuple[str, str]]:
        headers = [("Contact", call.local_contact), ("Allow", ALLOW_HEADER),
                   ("Supported", ", ".join(sorted(SUPPORTED)))]
        headers += [("Record-Route", rr) for rr in call.invite.headers.get_all("Record-Route")]
        if call.timer is not None:
            headers += call.timer.response_headers()
        return headers

    def answered(self, call: Call, response: Response) -> None:
        """Send the 2xx to the INVITE: this confirms the dialog (RFC 3261 §12.1.1)."""
        self.send_response(call, response)
        call.dialog = Dialog.from_uas(call.invite, response, transport=call.transport,
                                      local_contact=call.local_contact)
        self.dialogs.add(call.dialog)
        self._arm_session_timer(call)

    def send_bye(self, call: Call) -> None:
        self._send_in_dialog(call, "BYE")

    def send_refer(self, call: Call, target: str) -> None:
        # RFC 3515 §2.1: Refer-To carries the target verbatim; Referred-By names us.
        self._send_in_dialog(call, "REFER", headers=[
            ("Refer-To", f"<{target}>"), ("Referred-By", call.local_contact)])
        event(logger, "sip.refer_sent", call_id=call.id, target=target)

    def forget(self, call: Call) -> None:
        if call.dialog is not None:
            call.dialog.terminate()
            self.dialogs.remove(call.dialog)
        self.by_dialog.pop((call.sip_call_id, call.local_tag), None)
        self.by_invite.pop(call.tx_key, None)
        for key in [k for k, (c, _) in self.pending.items() if c is call]:
            del self.pending[key]
        self.offering.discard(call.id)

    def _send_in_dialog(self, call: Call, method: str, *, body: bytes = b"",
                        content_type: str | None = None,
                        headers: list[tuple[str, str]] | None = None) -> None:
        assert call.dialog is not None
        request = call.dialog.create_request(method, body=body, content_type=content_type,
                                             headers=headers)
        self._stamp(request)
        if body and method in ("INVITE", "UPDATE"):
            self.offering.add(call.id)
        self._route(call, request)

    def _route(self, call: Call, request: Request) -> None:
        """Send an in-dialog request (or the ACK of a 2xx) to the dialog's next hop."""
        assert call.dialog is not None
        host, port, transport = call.dialog.next_hop()
        if transport == call.transport != "udp":
            # Reuse the caller's connection rather than opening one towards its Contact,
            # which is often unreachable behind NAT (the reasoning of RFC 5923).
            self._transmit(call, request, call.addr, transport)
            return
        port = port or (5061 if transport == "tls" else 5060)
        if is_ip(host):
            self._transmit(call, request, (host, port), transport)
        else:
            self.calls.spawn(self._resolve_and_send(call, request, host, port, transport),
                             f"resolve {host} for {call.id}")

    async def _resolve_and_send(self, call: Call, request: Request, host: str, port: int,
                                transport: str) -> None:
        # RFC 3263 §4.2 with an explicit or default port: the host's A/AAAA records, in the
        # address family the call came in on (the socket we can send from). SRV and NAPTR
        # would need a DNS client; a Contact or Record-Route naming a bare domain is rare.
        family = socket.AF_INET6 if ":" in call.addr[0] else socket.AF_INET
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=family, type=socket.SOCK_DGRAM)
        except OSError as exc:
            event(logger, "sip.unresolved_destination", logging.WARNING, call_id=call.id,
                  host=host, method=request.method, error=str(exc))
            self.offering.discard(call.id)
            if request.method not in ("BYE", "ACK") and not call.state.is_final:
                self.calls.end(call, f"next hop {host} does not resolve", send_bye=False)
            return
        self._transmit(call, request, (str(infos[0][4][0]), port), transport)

    def _transmit(self, call: Call, request: Request, addr: tuple[str, int],
                  transport: str) -> None:
        if request.method == "ACK":
            self.sip.send_ack(request, addr, transport)
            return
        key = self.sip.send_request(request, addr, transport)
        self.pending[key] = (call, request)

    def _stamp(self, message: Request | Response) -> None:
        header = "Server" if isinstance(message, Response) else "User-Agent"
        if header not in message.headers:
            message.headers.add(header, self.settings.user_agent)

    # -- events -----------------------------------------------------------------------------

    def on_event(self, event_: ev.Event) -> None:
        if isinstance(event_, ev.RequestReceived):
            self._on_request(event_)
        elif isinstance(event_, ev.AckReceived):
            self._on_ack(event_.request)
        elif isinstance(event_, ev.CancelReceived):
            self._on_cancel(event_)
        elif isinstance(event_, ev.ResponseReceived):
            self._on_response(event_)
        elif isinstance(event_, ev.TransactionTimeout):
            self._on_timeout(event_)
        elif isinstance(event_, ev.AckTimeout):
            call = self.by_dialog.get((event_.call_id, event_.local_tag))
            if call is not None:
                self.calls.end(call, "2xx never acknowledged (Timer H)", send_bye=True)
        elif isinstance(event_, ev.TransactionTerminated):
            self.pending.pop(event_.tx_key, None)
        elif isinstance(event_, ev.MessageDropped):
            event(logger, "sip.dropped", logging.DEBUG, reason=event_.reason,
                  peer=f"{event_.addr[0]}:{event_.addr[1]}")

    def _reply(self, rx: ev.RequestReceived, status: int, reason: str | None = None, *,
               headers: list[tuple[str, str]] | None = None, body: bytes = b"",
               content_type: str | None = None) -> None:
        response = make_response(rx.request, status, reason, to_tag=new_tag(),
                                 headers=headers or [], body=body, content_type=content_type)
        self._stamp(response)
        self.sip.send_response(rx.tx_key, response)

    def _on_request(self, rx: ev.RequestReceived) -> None:
        request = rx.request
        error = check_request(request, project_id=self.settings.project_id,
                              supported=SUPPORTED, allowed_methods=ALLOWED,
                              accepted_types=ACCEPTED_TYPES)
        if error is not None:
            self._stamp(error)
            self.sip.send_response(rx.tx_key, error)
            event(logger, "sip.request_refused", sip_call_id=_safe_call_id(request),
                  method=request.method, status=error.status)
            return
        if request.to.tag:
            self._in_dialog(rx)
        elif request.method == "INVITE":
            self._new_invite(rx)
        elif request.method == "OPTIONS":
            # 503 while draining: a dispatcher's probe moves new calls to other nodes.
            self._reply(rx, 503 if self.calls.draining else 200,
                        headers=[("Allow", ALLOW_HEADER), ("Accept", "application/sdp"),
                                 ("Supported", ", ".join(sorted(SUPPORTED)))])
        else:
            self._reply(rx, 481, "Call/Transaction Does Not Exist")

    # -- a new INVITE -----------------------------------------------------------------------

    def _new_invite(self, rx: ev.RequestReceived) -> None:
        request = rx.request
        if self.calls.draining or self.calls.active_count >= self.settings.max_calls:
            self._reply(rx, 503, "Service Unavailable", headers=[("Retry-After", "10")])
            event(logger, "sip.overload", sip_call_id=request.call_id,
                  calls=self.calls.active_count)
            return
        try:
            offer = parse_sdp(request.body) if request.body else None
        except SdpError as exc:
            self._reply(rx, 400, "Malformed SDP",
                        headers=[("Warning", f'399 callgate "malformed SDP: {exc}"')])
            return
        local_ip = _local_ip_toward(rx.addr[0], self.settings)
        if offer is not None:
            try:  # try the offer now so an impossible call is refused before it rings
                answer_offer(offer, local_ip=local_ip, local_port=9,
                             preferences=self.settings.codecs, session_id=0, session_version=0,
                             make_crypto=_trial_crypto)
            except NegotiationError as exc:
                self._reply(rx, exc.status, headers=[("Warning", exc.warning)])
                event(logger, "sip.offer_refused", sip_call_id=request.call_id,
                      reason=exc.reason)
                return
        try:
            timer = negotiate(request, default_interval=self.settings.session_expires)
        except IntervalTooSmall as exc:
            self._reply(rx, 422, "Session Interval Too Small",
                        headers=[("Min-SE", str(exc.min_se))])
            return
        except ValueError:
            self._reply(rx, 400, "Bad Session-Expires")
            return
        call = Call(id=new_call_id(), invite=request, tx_key=rx.tx_key, addr=rx.addr,
                    transport=rx.transport, local_tag=new_tag(),
                    local_contact=self._contact(local_ip, rx.transport,
                                                secure=request.uri.scheme == "sips"),
                    local_ip=local_ip,
                    offer=offer, timer=timer)
        self.by_invite[rx.tx_key] = call
        self.by_dialog[(request.call_id, call.local_tag)] = call
        event(logger, "call.incoming", call_id=call.id, sip_call_id=request.call_id,
              peer=f"{rx.addr[0]}:{rx.addr[1]}", transport=rx.transport,
              from_=request.headers.get("From"), to=request.headers.get("To"))
        ringing = make_response(request, 180, to_tag=call.local_tag,
                                headers=[("Contact", call.local_contact),
                                         ("Allow", ALLOW_HEADER)])
        self.send_response(call, ringing)
        call.move(CallState.RINGING, "180 sent")
        self.calls.offer_call(call)

    def _contact(self, ip: str, transport: str, *, secure: bool) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        port = self.contact_ports.get(transport, self.settings.sip_port)
        param = "" if transport == "udp" else f";transport={transport}"
        # RFC 3261 §12.1.1: a SIPS Contact only when the request went to a SIPS URI; OpenAI's
        # trunks dial sip:…;transport=tls, and phones that get sips: back can't ACK it.
        scheme = "sips" if secure and transport == "tls" else "sip"
        return f"<{scheme}:{self.settings.project_id}@{host}:{port}{param}>"

    def _on_cancel(self, cancel: ev.CancelReceived) -> None:
        call = self.by_invite.get(cancel.invite_tx_key)
        if call is None or call.state is not CallState.RINGING:
            return  # already answered: RFC 3261 §9.2, the CANCEL has no effect
        self.calls.finish_ringing(call, 487, CallState.CANCELLED, "caller cancelled")

    # -- in-dialog requests -----------------------------------------------------------------

    def _in_dialog(self, rx: ev.RequestReceived) -> None:
        request = rx.request
        dialog = self.dialogs.for_request(request)
        call = self.by_dialog.get((request.call_id, request.to.tag or ""))
        if dialog is None or call is None:
            if call is not None and request.method == "BYE" and call.state is CallState.RINGING:
                # The caller gave up on the early dialog: end the INVITE too (RFC 3261 §15).
                self._reply(rx, 200)
                self.calls.finish_ringing(call, 487, CallState.CANCELLED, "BYE while ringing")
                return
            self._reply(rx, 481, "Call/Transaction Does Not Exist")
            return
        status = dialog.receive_request(request)
        if status is not None:
            self._reply(rx, status)
            return
        handler = {"BYE": self._on_bye, "INVITE": self._on_reoffer, "UPDATE": self._on_reoffer,
                   "INFO": self._on_info, "NOTIFY": self._on_notify,
                   "OPTIONS": self._on_options}.get(request.method)
        if handler is None:
            self._reply(rx, 405, headers=[("Allow", ALLOW_HEADER)])
            return
        handler(call, rx)

    def _in_dialog_reply(self, call: Call, rx: ev.RequestReceived, status: int,
                         **kwargs: Any) -> None:
        response = make_response(rx.request, status, **kwargs)
        self._stamp(response)
        self.sip.send_response(rx.tx_key, response)

    def _on_bye(self, call: Call, rx: ev.RequestReceived) -> None:
        self._in_dialog_reply(call, rx, 200)
        self.calls.end(call, "caller hung up", send_bye=False)

    def _on_options(self, call: Call, rx: ev.RequestReceived) -> None:
        self._in_dialog_reply(call, rx, 200, headers=[("Allow", ALLOW_HEADER),
                                                      ("Accept", "application/sdp")])

    def _on_reoffer(self, call: Call, rx: ev.RequestReceived) -> None:
        """re-INVITE or UPDATE: hold/unhold, new address or codec, or a session refresh."""
        request = rx.request
        if call.id in self.offering and (request.method == "INVITE" or request.body):
            # Glare: both sides offered at once (RFC 3261 §14.2, RFC 3311 §5.2). Both get
            # 491 and each retries after a random wait, ours in _on_response.
            self._in_dialog_reply(call, rx, 491, reason="Request Pending")
            return
        try:
            timer = negotiate(request, default_interval=self.settings.session_expires,
                              current=call.timer)
        except IntervalTooSmall as exc:
            self._in_dialog_reply(call, rx, 422, headers=[("Min-SE", str(exc.min_se))])
            return
        except ValueError:
            self._in_dialog_reply(call, rx, 400, reason="Bad Session-Expires")
            return
        body, negotiated = b"", None
        if request.body and call.media is not None:
            try:
                offer = parse_sdp(request.body)
                sdp, negotiated = answer_offer(
                    offer, local_ip=call.local_ip, local_port=call.media.local_port,
                    preferences=self.settings.codecs, session_id=call.sdp_session_id,
                    session_version=call.sdp_version + 1,
                    make_crypto=lambda suite: _keep_crypto(call, suite))
            except (SdpError, NegotiationError) as exc:
                warning = exc.warning if isinstance(exc, NegotiationError) else \
                    f'399 callgate "malformed SDP: {exc}"'
                # RFC 3261 §14.2: a refused re-offer leaves the session as it was.
                self._in_dialog_reply(call, rx, 488, headers=[("Warning", warning)])
                return
            call.sdp_version += 1
            call.local_sdp, call.negotiated = sdp, negotiated
            call.media.start(negotiated, pcm_rate=ENGINE_RATE)
            event(logger, "call.media_updated", call_id=call.id, direction=negotiated.direction,
                  codec=negotiated.codec.name,
                  remote=f"{negotiated.remote_addr[0]}:{negotiated.remote_addr[1]}")
        if request.method == "INVITE" and call.local_sdp is not None:
            body = call.local_sdp.to_bytes()  # a re-INVITE's 2xx always carries SDP
        call.timer = timer
        headers = [("Contact", call.local_contact), ("Allow", ALLOW_HEADER),
                   ("Supported", "timer"), *timer.response_headers()]
        self._in_dialog_reply(call, rx, 200, headers=headers, body=body,
                              content_type="application/sdp" if body else None)
        self._arm_session_timer(call)

    def _on_info(self, call: Call, rx: ev.RequestReceived) -> None:
        request = rx.request
        digit = parse_dtmf_relay(request.body) if request.body else None
        self._in_dialog_reply(call, rx, 200)
        if digit is not None and call.session is not None:
            event(logger, "call.dtmf", call_id=call.id, digit=digit.digit, via="info")
            call.session.dtmf(digit.digit)

    def _on_notify(self, call: Call, rx: ev.RequestReceived) -> None:
        """REFER progress (RFC 3515 §2.4.5): the sipfrag status line says how it went."""
        self._in_dialog_reply(call, rx, 200)
        text = rx.request.body.decode("utf-8", "replace").strip()
        parts = text.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("SIP/") or not parts[1].isdigit():
            return
        status = int(parts[1])
        call.refer_status = status
        event(logger, "call.refer_progress", call_id=call.id, status=status,
              target=call.refer_target)
        if 200 <= status < 300:
            self.calls.end(call, f"transferred to {call.refer_target}", send_bye=True)
        elif status >= 300:
            call.refer_target = None  # the transfer failed; the call goes on

    def _on_ack(self, ack: Request) -> None:
        call = self.by_dialog.get((ack.call_id, ack.to.tag or ""))
        if call is None or call.state is not CallState.ACCEPTED:
            return
        if call.negotiated is None and call.local_sdp is not None:
            # Late offer: the answer arrives in the ACK (RFC 3264 §5, RFC 3261 §13.2.1).
            try:
                call.negotiated = accept_answer(call.local_sdp, parse_sdp(ack.body))
            except (SdpError, NegotiationError, ValueError) as exc:
                event(logger, "call.bad_answer_in_ack", logging.WARNING, call_id=call.id,
                      error=str(exc))
                self.calls.end(call, "no usable answer in the ACK", send_bye=True)
                return
            if call.media is not None:
                call.media.start(call.negotiated, pcm_rate=ENGINE_RATE)
        call.move(CallState.ACTIVE, "ACK received")

    # -- answers to our requests, and timers ------------------------------------------------

    def _on_response(self, rx: ev.ResponseReceived) -> None:
        entry = self.pending.get(rx.tx_key)
        if entry is None or rx.response.status < 200:
            return
        call, request = entry
        status = rx.response.status
        event(logger, "sip.response", call_id=call.id, method=request.method, status=status)
        if request.method in ("UPDATE", "INVITE"):
            self.offering.discard(call.id)
        if request.method in ("UPDATE", "INVITE") and status == 491:
            # RFC 3261 §14.1: the side that did not pick the Call-ID (the caller did) waits a
            # random 0-2 s before offering again.
            call.arm("glare_retry", random.uniform(0.0, 2.0), self._refresh, call)
        elif request.method in ("UPDATE", "INVITE") and status in (408, 481):
            # RFC 5057 §5.1: the dialog is gone.
            self.calls.end(call, f"session refresh answered {status}", send_bye=status != 481)
        elif request.method == "INVITE" and 200 <= status < 300 and call.dialog is not None:
            self._route(call, call.dialog.create_ack(request.cseq.seq))
        elif request.method == "REFER" and status >= 300:
            event(logger, "call.refer_refused", logging.WARNING, call_id=call.id, status=status)
            call.refer_target = None

    def _on_timeout(self, timeout: ev.TransactionTimeout) -> None:
        entry = self.pending.pop(timeout.tx_key, None)
        if entry is not None:
            call, request = entry
            event(logger, "sip.request_timeout", logging.WARNING, call_id=call.id,
                  method=request.method, timer=timeout.timer)
            self.offering.discard(call.id)
            if request.method != "BYE":
                self.calls.end(call, f"{request.method} timed out", send_bye=False)

    def _arm_session_timer(self, call: Call) -> None:
        timer = call.timer
        if timer is None:
            return
        delay = timer.next_deadline(0.0)
        call.arm("session_timer", delay, self._session_timer_fired, call, timer)

    def _session_timer_fired(self, call: Call, timer: SessionTimer) -> None:
        if call.state.is_final or call.dialog is None:
            return
        if timer.refresher == "uac":
            self.calls.end(call, "session timer expired (RFC 4028 §10)", send_bye=True)
            return
        self._refresh(call)
        self._arm_session_timer(call)

    def _refresh(self, call: Call) -> None:
        """Refresh the session: UPDATE if the caller allows it (no SDP needed), else
        re-INVITE with our current SDP."""
        if call.state.is_final or call.dialog is None or call.timer is None:
            return
        allow = {m.strip().upper() for m in call.invite.headers.get_all("Allow")}
        headers = [("Session-Expires", call.timer.header()), ("Supported", "timer")]
        if "UPDATE" in allow or call.local_sdp is None:
            self._send_in_dialog(call, "UPDATE", headers=headers)
        else:
            self._send_in_dialog(call, "INVITE", body=call.local_sdp.to_bytes(),
                                 content_type="application/sdp", headers=headers)


def _trial_crypto(suite: str) -> Any:
    from callgate.media.srtp import new_crypto
    return new_crypto(1, suite)


def _keep_crypto(call: Call, suite: str) -> Any:
    neg = call.negotiated
    if neg is not None and neg.local_crypto is not None and neg.local_crypto.suite == suite:
        return neg.local_crypto  # keep our key across re-offers so media isn't re-keyed
    return _trial_crypto(suite)


def _safe_call_id(request: Request) -> str | None:
    try:
        return request.call_id
    except SipParseError:
        return None


def _local_ip_toward(remote: str, settings: Any) -> str:
    """The address to advertise in Contact and SDP: the configured public one, else the
    address this host uses to reach ``remote`` (no packet is sent by a UDP connect)."""
    if settings.public_ip:
        return str(settings.public_ip)
    if settings.sip_host not in ("0.0.0.0", "::", ""):
        return str(settings.sip_host)
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"
