"""SIP requests and responses: parsed views, serialization, response building, identifiers.

This module is the public face of the syntax layer: it re-exports the URI and header types and
:func:`parse_message` / :class:`StreamFramer`, so callers import everything from here.

Header section text is decoded as UTF-8 with ``surrogateescape``: valid UTF-8 (caller names in
Cyrillic, RFC 4475 intmeth/unreason) reads naturally, any other byte becomes a lone surrogate that
serialization turns back into the same byte, so nothing crashes and nothing is altered. Parsers
that need ASCII (tokens, URIs, unquoted display names) reject those surrogates. Bodies stay bytes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from callgate.sip.errors import SipParseError
from callgate.sip.framing import StreamFramer
from callgate.sip.headers import CSeq, Headers, NameAddr, Via, parse_name_addr
from callgate.sip.model import Request, Response
from callgate.sip.parser import parse_message
from callgate.sip.uri import AbsoluteUri, SipUri, parse_uri

__all__ = [
    "AbsoluteUri",
    "CSeq",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "Via",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "parse_uri",
]


def make_response(request: Request, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"", content_type: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: every Via (in order), From, To (with
    ``to_tag`` added when the To has none and ``status > 100``), Call-ID and CSeq are copied as
    received; Timestamp too on a 100 (§8.2.6.1). Never raises on a partial request: a To that
    cannot be parsed is copied unchanged. Record-Route is not copied: dialog code adds it."""
    src = request.headers._items
    items = [item for item in src if item[0] == "via"]
    for key in ("from", "to", "call-id", "cseq"):
        for item in src:
            if item[0] == key:
                if key == "to" and to_tag and status > 100:
                    item = (item[0], item[1], _with_tag(item[2], to_tag))
                items.append(item)
                break
    if status == 100:
        items += [item for item in src if item[0] == "timestamp"]
    out = Headers._from_lines(items)
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return Response(status, reason, out, body)


def _with_tag(to_value: str, tag: str) -> str:
    try:
        if parse_name_addr(to_value).tag is not None:
            return to_value
    except SipParseError:
        return to_value
    # Appending is right for both forms: after "<uri>" and after an addr-spec the ';' starts a
    # header parameter (§20).
    return f"{to_value};tag={tag}"


def new_tag() -> str:
    """A From/To tag with 64 random bits (§19.3 asks for at least 32)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie (§8.1.1.7)."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_call_id() -> str:
    return secrets.token_hex(16)
