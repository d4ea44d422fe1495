"""The checks a UAS makes before acting on a request (RFC 3261 §8.2, RFC 4475 §3.3).

:func:`check_request` returns the error response to send, or ``None`` when the request may be
processed. The checks run in this order and the first failure answers:

1. ACK is never answered (§17.2.1, §17.2.3): ``None`` whatever it holds.
2. Structure, 400: readable Via/From/To/Call-ID/CSeq, exactly one of each of the last four, at
   most one Content-Length, Max-Forwards, Content-Type, and a CSeq method equal to the request
   method. :func:`~callgate.sip.message.parse_message` already refuses such messages; repeating
   it here covers requests built or edited in code. It runs first so that a request that is both
   malformed and of an unknown method (RFC 4475 mismatch02) gets the 400 that the RFC expects.
3. Method (§8.2.1): not in ``allowed_methods`` -> 405 with Allow for a method this module knows
   (RFC 3261 and extensions, REGISTER included: we are not a registrar), else 501.
4. Request-URI scheme (§8.2.2.1): not sip/sips -> 416.
5. Max-Forwards 0 -> 483 (§16.3 applied at the UAS, as the brief asks), except OPTIONS, which
   may be answered (§11, RFC 4475 zeromf).
6. Require (§8.2.2.3): option tags not in ``supported`` -> 420 with Unsupported; not for CANCEL.
7. Body (§8.2.3), only when the body is not empty: a Content-Encoding other than identity -> 415
   with Accept-Encoding; no Content-Type -> 400 (§20.15 makes it mandatory); a media type not
   in ``accepted_types`` -> 415 with Accept.
8. Accept on INVITE (§20.1, RFC 4475 sdp01): every answer we give to an INVITE carries SDP, so
   an Accept header that allows no ``application/sdp`` (a present but empty Accept allows
   nothing) -> 406.
9. Request-URI user (§8.2.2.1): when ``project_id`` is set, an out-of-dialog request (no To tag)
   other than OPTIONS and CANCEL must address ``sip:<project_id>@...`` -> else 404. OPTIONS
   probes often target the server itself with no user part; CANCEL reuses its INVITE's URI.
"""

from __future__ import annotations

from callgate.sip.errors import SipParseError
from callgate.sip.headers import parse_media_type
from callgate.sip.message import Request, Response, make_response, new_tag
from callgate.sip.parser import check_structure
from callgate.sip.uri import SipUri

__all__ = ["KNOWN_METHODS", "check_request"]

# Methods of RFC 3261 and its extensions, in the order an Allow header lists them.
_METHOD_ORDER = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "PRACK", "UPDATE", "INFO",
                 "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE", "PUBLISH", "REGISTER")
KNOWN_METHODS = frozenset(_METHOD_ORDER)


def check_request(req: Request, *, project_id: str | None, supported: frozenset[str],
                  allowed_methods: frozenset[str],
                  accepted_types: frozenset[str]) -> Response | None:
    """The error response a UAS must send for ``req``, or ``None`` (see the module docstring)."""
    if req.method == "ACK":
        return None
    try:
        check_structure(req, req.method)
        for name in ("Content-Length", "Max-Forwards", "Content-Type"):
            if len(req.headers.lines(name)) > 1:
                raise SipParseError(f"multiple {name} headers")
    except SipParseError:
        return _reply(req, 400)
    if req.method not in allowed_methods:
        if req.method in KNOWN_METHODS:
            return _reply(req, 405, [("Allow", _allow(allowed_methods))])
        return _reply(req, 501)
    if not isinstance(req.uri, SipUri):
        return _reply(req, 416)
    if req.max_forwards == 0 and req.method != "OPTIONS":
        return _reply(req, 483)
    if req.method != "CANCEL":
        known = {tag.lower() for tag in supported}
        unknown = [tag for tag in req.headers.get_all("Require") if tag.lower() not in known]
        if unknown:
            return _reply(req, 420, [("Unsupported", ", ".join(unknown))])
    if req.body:
        encodings = [e.lower() for e in req.headers.get_all("Content-Encoding")]
        if any(e != "identity" for e in encodings):
            return _reply(req, 415, [("Accept-Encoding", "identity")])
        if req.content_type is None:
            return _reply(req, 400)
        if req.content_type not in {t.lower() for t in accepted_types}:
            return _reply(req, 415, [("Accept", ", ".join(sorted(accepted_types)))])
    if req.method == "INVITE" and "Accept" in req.headers and not _accepts_sdp(req):
        return _reply(req, 406)
    if (project_id is not None and req.method not in ("OPTIONS", "CANCEL")
            and req.to.tag is None and req.uri.user != project_id):
        return _reply(req, 404)
    return None


def _reply(req: Request, status: int, headers: list[tuple[str, str]] | None = None) -> Response:
    # A final response needs a To tag (§8.2.6.2); make_response keeps one already there.
    return make_response(req, status, to_tag=new_tag(), headers=headers or [])


def _allow(methods: frozenset[str]) -> str:
    ordered = [m for m in _METHOD_ORDER if m in methods]
    ordered += sorted(methods - KNOWN_METHODS)
    return ", ".join(ordered)


def _accepts_sdp(req: Request) -> bool:
    for item in req.headers.get_all("Accept"):
        try:
            media, params = parse_media_type(item)
        except SipParseError:
            continue
        if media not in ("application/sdp", "application/*", "*/*"):
            continue
        q = params.get("q")
        try:
            if q is not None and float(q) == 0.0:
                continue
        except ValueError:
            pass
        return True
    return False
