"""Everything the calls core asks its shell to do, as small frozen dataclasses.

The core (:mod:`callgate.calls.core`) queues these; :mod:`callgate.calls.shell` drains them
with ``next_action()`` and carries each one out. ``call_id`` is callgate's ``rtc_…`` id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callgate.calls.state import CallState
from callgate.media.offer_answer import NegotiatedMedia
from callgate.sip.events import Addr, TxKey
from callgate.sip.message import Request, Response


@dataclass(frozen=True, slots=True)
class SendResponse:
    tx_key: TxKey
    response: Response


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Start a client transaction; its key is ``tx_key`` (the core chose the Via branch).
    ``call_id`` names who sent it: a call, or ``trunk:NAME`` for a registration.
    ``addr`` may name a host the shell must resolve (a trunk); a failure to resolve is fed
    back as a transport ``TransactionTimeout`` for ``tx_key``."""

    call_id: str
    request: Request
    addr: Addr
    transport: str
    tx_key: TxKey


@dataclass(frozen=True, slots=True)
class SendAck:
    """The ACK for a 2xx to our INVITE (no transaction, RFC 3261 §13.2.2.4)."""

    call_id: str
    request: Request
    addr: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class SendKeepalive:
    """A CRLF keep-alive on the TCP/TLS connection to a trunk (RFC 5626 §3.5.1)."""

    addr: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class OfferCall:
    """A new inbound call rings: give ``event`` (``realtime.call.incoming``) to the webhook,
    or accept it with the default session when none is configured."""

    call_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notify:
    """Deliver a call-progress webhook (same signed envelope as ``realtime.call.incoming``)."""

    call_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConfigureMedia:
    """Send and receive media as negotiated (again after a re-offer). Never before the call is
    answered and confirmed, unless early media was asked for."""

    call_id: str
    negotiated: NegotiatedMedia


@dataclass(frozen=True, slots=True)
class StartSession:
    """Start the realtime session with ``config`` on the call's media."""

    call_id: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key press signalled in SIP INFO (RFC 2976 dtmf-relay): hand it to the session."""

    call_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """A transfer did not happen and the call goes on: tell its session, so that the agent
    can say so. ``sip_status`` is None when nothing final came back in time; ``detail`` is
    what happened, in words for the session's ``error``."""

    call_id: str
    target_uri: str
    sip_status: int | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class CheckMedia:
    """Report how many RTP packets arrived so far with ``media_activity`` (media timeout)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Release:
    """The call is over: free its session, engine and media. The core has forgotten it."""

    call_id: str
    state: CallState
    reason: str


Action = (SendResponse | SendRequest | SendAck | SendKeepalive | OfferCall | Notify | ConfigureMedia
          | StartSession | Dtmf | TransferFailed | CheckMedia | Release)
