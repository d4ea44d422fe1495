"""Inside an established dialog: re-offers (hold, new address, refresh), INFO, NOTIFY, the
late-offer answer in the ACK, RFC 4028 session refresh and re-INVITE glare.

Part of the calls core (:class:`callgate.calls.core.CallCore` mixes it in): sans-IO, driven
by the same events and ``now``, acting only through the core's queue of actions.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from callgate.calls import actions as act
from callgate.calls import progress
from callgate.calls.base import CoreBase
from callgate.calls.call import Call
from callgate.calls.screening import ALLOW_HEADER, new_crypto_key
from callgate.calls.session_timer import IntervalTooSmall, negotiate
from callgate.calls.state import CallState
from callgate.log import event
from callgate.media.dtmf import parse_dtmf_relay
from callgate.media.offer_answer import (
    CryptoSuite,
    NegotiationError,
    answer_offer,
)
from callgate.observe.events import CallTransfer
from callgate.sip import events as ev
from callgate.sip.message import Request, Response, make_response
from callgate.sip.sdp import SdpError, parse_sdp

logger = logging.getLogger("callgate.calls")


class MidCall(CoreBase):
    def _answer(self, rx: ev.RequestReceived, status: int, **kwargs: Any) -> None:
        self._respond(rx.tx_key, make_response(rx.request, status, **kwargs))

    def in_dialog_request(self, call: Call, rx: ev.RequestReceived, now: float) -> None:
        method = rx.request.method
        if method == "BYE":
            self._answer(rx, 200)
            self.end(call, "peer hung up", now, send_bye=False)
        elif method in ("INVITE", "UPDATE"):
            self._reoffer(call, rx, now)
        elif method == "INFO":
            self._info(call, rx)
        elif method == "NOTIFY":
            self._notify(call, rx, now)
        elif method == "OPTIONS":
            self._answer(rx, 200, headers=[("Allow", ALLOW_HEADER),
                                           ("Accept", "application/sdp")])
        else:
            self._answer(rx, 405, headers=[("Allow", ALLOW_HEADER)])

    def _reoffer(self, call: Call, rx: ev.RequestReceived, now: float) -> None:
        """re-INVITE or UPDATE: hold/unhold, new address or codec, or a session refresh."""
        request = rx.request
        if call.offering and (request.method == "INVITE" or request.body):
            # Glare: both sides offered at once (RFC 3261 §14.2, RFC 3311 §5.2). Both get
            # 491 and each retries after a random wait, ours in on_dialog_response.
            self._answer(rx, 491, reason="Request Pending")
            return
        try:
            timer = negotiate(request, default_interval=self.settings.session_expires,
                              current=call.timer)
        except IntervalTooSmall as exc:
            self._answer(rx, 422, headers=[("Min-SE", str(exc.min_se))])
            return
        except ValueError:
            self._answer(rx, 400, reason="Bad Session-Expires")
            return
        if request.body and call.local_port:
            try:
                offer = parse_sdp(request.body)
                sdp, negotiated = answer_offer(
                    offer, local_ip=call.local_ip, local_port=call.local_port,
                    preferences=self.settings.codecs, session_id=call.sdp_session_id,
                    session_version=call.sdp_version + 1,
                    make_crypto=lambda suite: _keep_crypto(call, suite))
            except (SdpError, NegotiationError) as exc:
                warning = exc.warning if isinstance(exc, NegotiationError) else \
                    f'399 callgate "malformed SDP: {exc}"'
                # RFC 3261 §14.2: a refused re-offer leaves the session as it was.
                self._answer(rx, 488, headers=[("Warning", warning)])
                return
            call.sdp_version += 1
            call.local_sdp, call.negotiated = sdp, negotiated
            if call.state is CallState.ACTIVE:
                self._emit(act.ConfigureMedia(call.id, negotiated))
            event(logger, "call.media_updated", call_id=call.id, direction=negotiated.direction,
                  codec=negotiated.codec.name,
                  remote=f"{negotiated.remote_addr[0]}:{negotiated.remote_addr[1]}")
        body = b""
        if request.method == "INVITE" and call.local_sdp is not None:
            body = call.local_sdp.to_bytes()  # a re-INVITE's 2xx always carries SDP
        call.timer = timer
        headers = [("Contact", call.local_contact), ("Allow", ALLOW_HEADER),
                   ("Supported", "timer"), *timer.response_headers()]
        self._answer(rx, 200, headers=headers, body=body,
                     content_type="application/sdp" if body else None)
        self.arm_session_timer(call, now)

    def _info(self, call: Call, rx: ev.RequestReceived) -> None:
        request = rx.request
        digit = parse_dtmf_relay(request.body) if request.body else None
        self._answer(rx, 200)
        if digit is not None:
            event(logger, "call.dtmf", call_id=call.id, digit=digit.digit, via="info")
            self._emit(act.Dtmf(call.id, digit.digit))

    # -- transfers (RFC 3515) -------------------------------------------------------------------

    def _notify(self, call: Call, rx: ev.RequestReceived, now: float) -> None:
        """REFER progress (RFC 3515 §2.4.5): the sipfrag status line says how it went."""
        request = rx.request
        package = (request.headers.get("Event") or "").partition(";")[0].strip().lower()
        if package != "refer":
            self._answer(rx, 489, reason="Bad Event", headers=[("Allow-Events", "refer")])
            return
        if call.refer_target is None:
            # The REFER's implicit subscription is over: it succeeded, failed or timed out
            # (RFC 6665 §4.1.3).
            self._answer(rx, 481, reason="Subscription Does Not Exist")
            return
        frag = _sipfrag_status(request.body)
        if frag is None:
            self._answer(rx, 400, reason="Bad sipfrag status line")
            return
        self._answer(rx, 200)
        status, reason = frag
        if status < 200:
            self._transfer_step(call, progress.TRANSFER_PROGRESS, status, reason)
        elif status < 300:
            target = call.refer_target
            self._transfer_step(call, progress.TRANSFERRED, status, reason)
            self.end(call, f"transferred to {target}", now, send_bye=True)
        else:
            self.transfer_failed(call, status, reason)

    def _transfer_step(self, call: Call, kind: str, status: int | None, reason: str) -> None:
        """Log, record and report (webhook) one step of the call's transfer."""
        target = call.refer_target or ""
        event(logger, "call.transfer", logging.WARNING if kind == progress.TRANSFER_FAILED
              else logging.INFO, call_id=call.id, step=kind.rpartition(".")[2],
              target=target, status=status, reason=reason)
        self._emit(act.Notify(call.id, progress.progress_event(
            kind, call.id, self._now, target_uri=target, sip_status=status, reason=reason)))
        if self.observer is not None:
            self.observer.call_event(CallTransfer(call.id, kind, target, status, reason,
                                                  time.time()))

    def transfer_failed(self, call: Call, status: int | None, reason: str,
                        detail: str | None = None) -> None:
        """The transfer is over without success; the call and its session go on. ``detail``
        tells the session what happened (by default the status and the reason)."""
        target = call.refer_target
        if target is None:
            return
        self._transfer_step(call, progress.TRANSFER_FAILED, status, reason)
        call.refer_target = None
        call.deadlines.pop("refer", None)
        if detail is None:
            detail = f"{status} {reason}" if status is not None else reason
        self._emit(act.TransferFailed(call.id, target, status, reason, detail))

    def on_dialog_response(self, call: Call, request: Request, response: Response,
                           now: float) -> None:
        """A final answer to one of our in-dialog requests."""
        status, method = response.status, request.method
        event(logger, "sip.response", call_id=call.id, method=method, status=status)
        if method in ("UPDATE", "INVITE"):
            call.offering = False
        if method in ("UPDATE", "INVITE") and status == 491:
            # RFC 3261 §14.1: the side that did not pick the Call-ID waits a random 0-2 s
            # before offering again (the one that did: 2.1-4 s).
            low, high = (0.0, 2.0) if call.direction == "inbound" else (2.1, 4.0)
            self._arm(call, "glare", now + self.rng.uniform(low, high))
        elif method in ("UPDATE", "INVITE") and status in (408, 481):
            # RFC 5057 §5.1: the dialog is gone.
            self.end(call, f"session refresh answered {status}", now, send_bye=status != 481)
        elif method == "INVITE" and 200 <= status < 300 and call.dialog is not None:
            call.dialog.receive_response(request, response)
            self._send(call, call.dialog.create_ack(request.cseq.seq), *self._next_hop(call))
        elif method == "REFER" and status >= 300:
            refused = f"REFER answered {status} {response.reason}"
            self.transfer_failed(call, status, refused, detail=refused)
        elif method == "REFER" and call.refer_target is not None:
            self._transfer_step(call, progress.TRANSFER_PROGRESS, status, response.reason)

    def session_timer_fired(self, call: Call, now: float) -> None:
        if call.timer is None or call.dialog is None or not call.state.is_up:
            return
        if call.timer.refresher == ("uac" if call.direction == "inbound" else "uas"):
            self.end(call, "session timer expired (RFC 4028 §10)", now, send_bye=True)
            return
        self.refresh(call)
        self.arm_session_timer(call, now)

    def refresh(self, call: Call) -> None:
        """Refresh the session: UPDATE if the peer allows it (no SDP needed), else re-INVITE
        with our current SDP."""
        if not call.state.is_up or call.dialog is None or call.timer is None:
            return
        # The peer's Allow: from its INVITE, or from its 2xx when we placed the call.
        allow = {m.strip().upper() for m in call.extra.get("peer_allow")
                 or call.invite.headers.get_all("Allow")}
        headers = [("Session-Expires", call.timer.header()), ("Supported", "timer")]
        if "UPDATE" in allow or call.local_sdp is None:
            self._send_in_dialog(call, "UPDATE", headers=headers)
        else:
            self._send_in_dialog(call, "INVITE", body=call.local_sdp.to_bytes(),
                                 content_type="application/sdp", headers=headers)


def _sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a ``message/sipfrag`` body (RFC 3420): ``SIP/2.0 486 Busy Here``."""
    line = body[:200].partition(b"\n")[0].decode("utf-8", "replace").strip()
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.upper().startswith("SIP/") or len(code) != 3 or not code.isdigit() \
            or not 100 <= int(code) <= 699:
        return None
    return int(code), "".join(c for c in reason if c.isprintable())[:100]


def _keep_crypto(call: Call, suite: str) -> CryptoSuite:
    neg = call.negotiated
    if neg is not None and neg.local_crypto is not None and neg.local_crypto.suite == suite:
        return neg.local_crypto  # keep our key across re-offers so media isn't re-keyed
    return new_crypto_key(suite)
