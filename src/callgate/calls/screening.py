"""What a new INVITE must pass before it rings (pure functions, no state).

The request is checked (RFC 3261 §8.2), its offer tried (RFC 3264) and its session timer
negotiated (RFC 4028) so that an impossible call is refused before anyone is bothered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from callgate.calls.session_timer import IntervalTooSmall, SessionTimer, negotiate
from callgate.config import Settings
from callgate.log import event
from callgate.media.offer_answer import CryptoSuite, NegotiationError, answer_offer
from callgate.media.srtp import new_crypto
from callgate.sip.message import Request, Response, make_response, new_tag
from callgate.sip.sdp import SdpError, SessionDescription, parse_sdp

logger = logging.getLogger("callgate.sip")

ALLOWED = frozenset({"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "NOTIFY"})
SUPPORTED = frozenset({"timer"})
ACCEPTED_TYPES = frozenset({"application/sdp", "application/dtmf-relay", "application/dtmf",
                            "message/sipfrag"})
ALLOW_HEADER = ", ".join(sorted(ALLOWED))


@dataclass(frozen=True, slots=True)
class Screened:
    offer: SessionDescription | None
    timer: SessionTimer


def new_crypto_key(suite: str) -> CryptoSuite:
    return new_crypto(1, suite)


def refuse(request: Request, status: int, reason: str | None = None,
           headers: list[tuple[str, str]] | None = None) -> Response:
    return make_response(request, status, reason, to_tag=new_tag(), headers=headers or [])


def screen_invite(request: Request, settings: Settings, *, local_ip: str) -> Screened | Response:
    """The offer and session timer of an acceptable INVITE, or the error response to send."""
    try:
        offer = parse_sdp(request.body) if request.body else None
    except SdpError as exc:
        return refuse(request, 400, "Malformed SDP",
                      [("Warning", f'399 callgate "malformed SDP: {exc}"')])
    if offer is not None:
        try:
            answer_offer(offer, local_ip=local_ip, local_port=9, preferences=settings.codecs,
                         session_id=0, session_version=0, make_crypto=new_crypto_key)
        except NegotiationError as exc:
            event(logger, "sip.offer_refused", sip_call_id=request.call_id, reason=exc.reason)
            return refuse(request, exc.status, headers=[("Warning", exc.warning)])
    try:
        timer = negotiate(request, default_interval=settings.session_expires)
    except IntervalTooSmall as exc:
        return refuse(request, 422, "Session Interval Too Small",
                      [("Min-SE", str(exc.min_se))])
    except ValueError:
        return refuse(request, 400, "Bad Session-Expires")
    return Screened(offer, timer)


def contact(user: str, ip: str, port: int, transport: str, *, secure: bool) -> str:
    """Our Contact for a dialog on ``transport`` (RFC 3261 §12.1.1, §19.1.4)."""
    host = f"[{ip}]" if ":" in ip else ip
    param = "" if transport == "udp" else f";transport={transport}"
    # A SIPS Contact only when the request went to a SIPS URI; OpenAI's trunks dial
    # sip:…;transport=tls, and phones that get sips: back can't ACK it.
    scheme = "sips" if secure and transport == "tls" else "sip"
    return f"<{scheme}:{user}@{host}:{port}{param}>"


def media_security(offer: SessionDescription | None) -> str | None:
    """``sip_media_security`` for the webhook: known only when the INVITE carried an offer."""
    if offer is None:
        return None
    audio = next((m for m in offer.media if m.media.lower() == "audio"), None)
    if audio is None:
        return None
    return "srtp" if "SAVP" in audio.proto.upper() else "rtp"
