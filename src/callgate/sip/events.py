"""Everything the SIP endpoint can tell its transaction user (TU), as small frozen dataclasses.

The sans-IO :class:`callgate.sip.endpoint.SipEndpoint` queues these; the TU drains them with
``next_event()``. Addresses are ``(host, port)`` tuples and transports are ``"udp"``, ``"tcp"``
or ``"tls"`` (lower case), exactly as the transport shell reported them.
"""

from __future__ import annotations

from dataclasses import dataclass

from callgate.sip.message import Request, Response

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TxKey:
    """Identifies one transaction (RFC 3261 §17.1.3 / §17.2.3).

    ``server`` tells the two tables apart. ``branch`` and ``sent_by`` come from the top Via;
    ``method`` is the CSeq method, with ACK folded into INVITE (an ACK to a non-2xx response is
    part of the INVITE transaction). For requests whose branch lacks the ``z9hG4bK`` cookie
    (RFC 2543 peers) ``branch`` is empty and ``legacy`` carries the fields §17.2.3 matches on.
    """

    server: bool
    method: str
    branch: str
    sent_by: str = ""
    legacy: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request opened a server transaction; answer it with ``send_response(tx_key, ...)``.

    INVITE server transactions have already sent ``100 Trying`` (RFC 3261 §17.2.1) when the
    endpoint is configured to (the default).
    """

    request: Request
    tx_key: TxKey
    addr: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK outside any transaction: the ACK to a 2xx (RFC 3261 §13.3.1.4, §17.1.1.3).

    The endpoint has already stopped retransmitting the matching 2xx. Every ACK for a 2xx is
    reported, duplicates included; the dialog decides what it means.
    """

    request: Request
    addr: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL matched a pending INVITE server transaction (RFC 3261 §9.2).

    The endpoint has answered the CANCEL with 200 itself; the TU should now answer the INVITE
    with ``487 Request Terminated`` via ``send_response(invite_tx_key, ...)``.
    """

    cancel: Request
    invite_tx_key: TxKey


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for one of our client transactions (retransmissions already absorbed).

    2xx responses to INVITE are reported every time they arrive (RFC 6026 §8.4): the UAC must
    ACK each one with ``send_ack``.
    """

    response: Response
    tx_key: TxKey


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """A transaction timer ran out (RFC 3261 §17).

    ``timer`` names it: ``"B"``/``"F"`` (no final response: treat as 408), ``"H"`` (our non-2xx
    final response to INVITE was never ACKed), ``"C"`` (INVITE stuck in Proceeding; the TU may
    CANCEL), ``"transport"`` (the transport could not deliver), ``"guard"`` (the TU never
    answered a non-INVITE request within 64*T1).
    """

    tx_key: TxKey
    method: str
    timer: str


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction was removed from the table (it can no longer be used)."""

    tx_key: TxKey


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """Our 2xx to INVITE was never ACKed within 64*T1 (RFC 3261 §13.3.1.4): send BYE."""

    call_id: str
    local_tag: str
    remote_tag: str
    cseq: int


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message was discarded (unparseable, stray response, table full, ...)."""

    reason: str
    addr: Addr


Event = (
    RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | TransactionTimeout
    | TransactionTerminated
    | AckTimeout
    | MessageDropped
)
