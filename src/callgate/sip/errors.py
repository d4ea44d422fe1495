"""The one exception the SIP syntax layer raises.

Every malformed input (start line, header, URI, framing) surfaces as :class:`SipParseError`, so a
transport can catch exactly one type and decide whether to answer (``partial`` set) or drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callgate.sip.message import Request


class SipParseError(ValueError):
    """A SIP message, header or URI that does not follow RFC 3261 §25.

    ``status`` is the response a UAS should send: 400 by default, 505 for an unsupported
    SIP-Version (RFC 3261 §8.2.1 is silent, §21.5.6 defines 505), 413 for a message over the
    size bound. ``partial`` is set only for a request that can still be answered: its start line
    was read (leniently, if need be) and its top Via names where a response goes (§18.2.2).
    Its header values are the raw ones; on a partial, ``vias`` is read leniently while other
    parsed views may raise again, but ``make_response(partial, status)`` never does.
    """

    def __init__(self, reason: str, status: int = 400, partial: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial

    def __repr__(self) -> str:
        return f"SipParseError({self.reason!r}, status={self.status})"
