"""The sans-IO SIP endpoint: whole messages in, events and datagrams out, time passed in.

Shaped like aioquic's connection: ``receive()`` feeds one framed message, ``next_event()`` drains
what the transaction user (TU) must act on, ``datagrams_to_send()`` returns what to put on the
wire, ``get_timer()``/``handle_timer()`` drive RFC 3261 timers as plain deadlines. No sockets,
no clock, no asyncio: :mod:`callgate.sip.transport` is the shell around it.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import itertools
import logging
from collections import Counter, deque
from collections.abc import Mapping

from callgate.log import event as log_event
from callgate.sip.events import (
    AckReceived,
    AckTimeout,
    Addr,
    CancelReceived,
    Event,
    MessageDropped,
    RequestReceived,
    TransactionTerminated,
    TxKey,
)
from callgate.sip.limits import RequestGate, RequestLimits
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    make_response,
    new_branch,
    new_tag,
    parse_message,
)
from callgate.sip.transaction import (
    RELIABLE_TRANSPORTS,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimerConfig,
    Transaction,
    TxState,
    client_key,
    is_rfc3261_branch,
    response_client_key,
    server_key,
)

logger = logging.getLogger(__name__)

Datagram = tuple[bytes, Addr, str]


class _PendingAck:
    """A 2xx to INVITE waiting for its ACK (RFC 3261 §13.3.1.4; RFC 6026 moved this to the TU).

    Retransmits the 2xx at T1, doubling up to T2, on unreliable transports; gives up at 64*T1.
    """

    def __init__(self, response: Response, data: bytes, addr: Addr, transport: str,
                 config: TimerConfig, now: float) -> None:
        self.data = data
        self.addr = addr
        self.transport = transport
        self.config = config
        self.timeout = AckTimeout(response.call_id, response.to.tag or "",
                                  response.from_.tag or "", response.cseq.seq)
        self.done = False
        self.scheduled: float | None = None
        self._interval = config.t1
        self.timers: dict[str, float] = {"giveup": now + config.t64}
        if transport not in RELIABLE_TRANSPORTS:
            self.timers["retransmit"] = now + config.t1

    def next_deadline(self) -> float | None:
        return min(self.timers.values()) if self.timers else None


class SipEndpoint:
    """One SIP user agent's transaction layer (RFC 3261 §17) plus 2xx/ACK handling (§13.3.1.4).

    ``sent_by`` maps a transport (``"udp"``, ``"tcp"``, ``"tls"``) to the ``(host, port)`` put
    in the Via of requests we originate; the transport shell fills it in once it has bound.
    ``transactions`` is the live table (server and client); ``stats`` counts what happened
    (messages_received, requests_received, responses_received, parse_errors,
    error_responses_sent, messages_dropped, stray_responses, retransmissions_absorbed,
    retransmissions, acks_absorbed, transactions_rejected, requests_sent, acks_sent).
    ``max_transactions`` bounds the table: past it, new requests get a stateless 503.
    ``limits`` bounds what one source may send (rates, header counts); None: no rate limits.
    ``overloaded``, set by the shell (e.g. file descriptors running out), names why new
    INVITEs get a stateless 503 with Retry-After; None while all is well.
    """

    def __init__(self, *, sent_by: Mapping[str, Addr] | None = None,
                 timers: TimerConfig | None = None, max_transactions: int = 50_000,
                 send_trying: bool = True, limits: RequestLimits | None = None) -> None:
        self.timers = timers or TimerConfig()
        self.limits = limits or RequestLimits()
        self._gate = RequestGate(limits) if limits is not None else None
        self.overloaded: str | None = None
        self.max_transactions = max_transactions
        self.send_trying = send_trying
        self.sent_by: dict[str, Addr] = dict(sent_by or {})
        self.transactions: dict[TxKey, Transaction] = {}
        self.pending_acks: dict[tuple[str, int, str], _PendingAck] = {}
        self.stats: Counter[str] = Counter()
        self._events: deque[Event] = deque()
        self._out: list[Datagram] = []
        self._heap: list[tuple[float, int, Transaction | _PendingAck]] = []
        self._seq = itertools.count()

    # -- the Sink the transactions write to -------------------------------------------------

    def send(self, data: bytes, addr: Addr, transport: str) -> None:
        self._out.append((data, addr, transport))

    def emit(self, event: Event) -> None:
        self._events.append(event)

    # -- verbs ---------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event for the TU, or ``None`` when there is none."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[Datagram]:
        """Everything queued for the wire since the last call: ``(data, (host, port), transport)``.

        On TCP/TLS the address names the connection a request came in on (responses go back on
        it, §18.2.2) or the peer to connect to.
        """
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline (same clock as ``now``) at which ``handle_timer`` must run."""
        heap = self._heap
        while heap and heap[0][2].scheduled != heap[0][0]:
            heapq.heappop(heap)  # a superseded deadline
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if item.scheduled != when:
                continue
            item.scheduled = None
            if isinstance(item, _PendingAck):
                self._pending_ack_timer(item, now)
            else:
                item.handle_timer(now)
                self._after(item)

    def receive(self, data: bytes, addr: Addr, transport: str, now: float) -> None:
        """Feed one whole message (a datagram, or one message framed off a stream)."""
        transport = transport.lower()
        self.stats["messages_received"] += 1
        try:
            message = parse_message(data, max_headers=self.limits.max_headers,
                                    max_header_line=self.limits.max_header_line)
        except SipParseError as exc:
            self._parse_error(exc, addr, transport)
            return
        try:
            if isinstance(message, Request):
                self._receive_request(message, addr, transport, now)
            else:
                self._receive_response(message, addr, now)
        except SipParseError as exc:
            # A header the parser reads lazily was malformed (§16.3-style sanity check failed).
            if isinstance(message, Request):
                exc.partial = exc.partial or message
            self._parse_error(exc, addr, transport)

    def send_response(self, tx_key: TxKey, response: Response, now: float) -> bool:
        """Answer the server transaction ``tx_key``; False if it is gone or already final.

        A 2xx to INVITE is then retransmitted by the endpoint (UDP: T1 doubling to T2) until
        the ACK arrives (→ ``AckReceived``) or 64*T1 passes (→ ``AckTimeout``).
        """
        tx = self.transactions.get(tx_key)
        if not isinstance(tx, (ServerInviteTransaction, ServerNonInviteTransaction)):
            log_event(logger, "sip.response_without_transaction", logging.WARNING,
                      call_id=response.call_id, status=response.status)
            return False
        sent = tx.send_response(response, now)
        if sent and isinstance(tx, ServerInviteTransaction) and 200 <= response.status < 300:
            key = (response.call_id, response.cseq.seq, response.to.tag or "")
            if key not in self.pending_acks:
                pending = _PendingAck(response, response.to_bytes(), tx.addr, tx.transport,
                                      self.timers, now)
                self.pending_acks[key] = pending
                self._schedule(pending)
        self._after(tx)
        return sent

    def send_request(self, request: Request, addr: Addr, transport: str, now: float) -> TxKey:
        """Start a client transaction for ``request`` (not ACK: see ``send_ack``).

        A top Via with a fresh branch is added when the request has none (it is changed in
        place); Max-Forwards 70 is added when missing.
        """
        transport = transport.lower()
        if request.method == "ACK":
            raise ValueError("ACK is not a transaction; use send_ack")
        self._prepare(request, transport)
        key = client_key(request.vias[0].branch or "", request.method)
        if key in self.transactions:
            raise ValueError(f"branch already in use: {key.branch}")
        tx: Transaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(key, request, addr, transport, self.timers, self, now)
        else:
            tx = ClientNonInviteTransaction(key, request, addr, transport, self.timers, self, now)
        self.transactions[key] = tx
        self.stats["requests_sent"] += 1
        self._after(tx)
        return key

    def send_ack(self, ack: Request, addr: Addr, transport: str, now: float) -> None:
        """Send an ACK for a 2xx (§13.2.2.4): no transaction; a new Via branch if none."""
        transport = transport.lower()
        self._prepare(ack, transport)
        self.send(ack.to_bytes(), addr, transport)
        self.stats["acks_sent"] += 1

    def transport_error(self, addr: Addr, transport: str, now: float) -> None:
        """The shell could not reach ``addr``: fail the transactions bound to it (§17.1.4)."""
        transport = transport.lower()
        for tx in list(self.transactions.values()):
            if tx.addr == addr and tx.transport == transport:
                tx.transport_error()
                self._after(tx)

    # -- receiving -----------------------------------------------------------------------------

    def _parse_error(self, exc: SipParseError, addr: Addr, transport: str) -> None:
        self.stats["parse_errors"] += 1
        partial = exc.partial
        if partial is not None and partial.method != "ACK":
            try:
                response = make_response(partial, exc.status, to_tag=new_tag(),
                                         headers=[("Warning", _warning(exc.reason))])
                # Back to the source: the Via of a malformed request is not to be trusted.
                self.send(response.to_bytes(), addr, transport)
                self.stats["error_responses_sent"] += 1
                log_event(logger, "sip.bad_request", logging.INFO, status=exc.status,
                          reason=exc.reason, peer=_peer(addr))
                return
            except SipParseError:
                pass
        self._drop(f"unparseable message: {exc.reason}", addr)

    def _drop(self, reason: str, addr: Addr) -> None:
        self.stats["messages_dropped"] += 1
        self.emit(MessageDropped(reason, addr))
        log_event(logger, "sip.message_dropped", logging.INFO, reason=reason, peer=_peer(addr))

    def _receive_request(self, request: Request, addr: Addr, transport: str, now: float) -> None:
        self.stats["requests_received"] += 1
        vias = request.vias
        if not vias:
            raise SipParseError("no Via header", partial=None)
        _ = request.call_id, request.from_, request.to
        if request.cseq.method != request.method:
            raise SipParseError("CSeq method does not match the request method")
        _stamp_via(request, vias, addr)
        if request.method == "ACK":
            self._receive_ack(request, addr, transport, now)
            return
        key = server_key(request)
        tx = self.transactions.get(key)
        if isinstance(tx, (ServerInviteTransaction, ServerNonInviteTransaction)):
            self.stats["retransmissions_absorbed"] += 1
            tx.on_request(request, now)
            self._after(tx)
            return
        if len(self.transactions) >= self.max_transactions:
            self._reject_overload(request, addr, transport, 5, "transactions")
            return
        if request.method != "CANCEL" and not self._admit(request, addr, transport, now):
            return
        target = _response_target(vias[0], addr, transport)
        if request.method == "CANCEL":
            self._receive_cancel(request, key, target, now)
            return
        new: ServerInviteTransaction | ServerNonInviteTransaction
        if request.method == "INVITE":
            new = ServerInviteTransaction(key, request, *target, self.timers, self)
            if self.send_trying:
                # §17.2.1: 100 Trying at once; the TU may wait on a webhook for longer than 200 ms.
                new.send_response(make_response(request, 100), now)
        else:
            new = ServerNonInviteTransaction(key, request, *target, self.timers, self, now)
        self.transactions[key] = new
        self.emit(RequestReceived(request, key, addr, transport))
        self._after(new)

    def _receive_ack(self, ack: Request, addr: Addr, transport: str, now: float) -> None:
        key = server_key(ack)
        tx = self.transactions.get(key)
        if tx is None and key.legacy:
            # RFC 2543 ACK to an initial INVITE: the INVITE had no To tag, the ACK carries ours.
            plain = dataclasses.replace(key, legacy=("", *key.legacy[1:]))
            tx = self.transactions.get(plain)
        if isinstance(tx, ServerInviteTransaction) and tx.legacy_match(ack):
            to_tu = tx.on_ack(now)
            self._after(tx)
            if not to_tu:
                self.stats["acks_absorbed"] += 1
                return
        pending = self.pending_acks.pop((ack.call_id, ack.cseq.seq, ack.to.tag or ""), None)
        if pending is not None:
            pending.scheduled = None
            pending.done = True
        self.emit(AckReceived(ack, addr, transport))

    def _receive_cancel(self, cancel: Request, key: TxKey, target: tuple[Addr, str],
                        now: float) -> None:
        # §9.2: the CANCEL matches the INVITE with the same key (the method aside).
        invite_key = dataclasses.replace(key, method="INVITE")
        invite = self.transactions.get(invite_key)
        tx = ServerNonInviteTransaction(key, cancel, *target, self.timers, self, now)
        self.transactions[key] = tx
        if isinstance(invite, ServerInviteTransaction):
            tx.send_response(make_response(cancel, 200, to_tag=invite.to_tag or new_tag()), now)
            if invite.pending:
                self.emit(CancelReceived(cancel, invite_key))
        else:
            tx.send_response(make_response(cancel, 481, to_tag=new_tag()), now)
        self._after(tx)

    def _admit(self, request: Request, addr: Addr, transport: str, now: float) -> bool:
        """New out-of-dialog requests pass the source's rate limit; INVITEs also need the
        gateway not to be overloaded."""
        if request.to.tag:
            return True  # in a dialog the caller was already admitted to
        if request.method == "INVITE" and self.overloaded is not None:
            self._reject_overload(request, addr, transport, 10, self.overloaded)
            return False
        empty = self._gate.check(request.method, addr[0], now) if self._gate else None
        if empty is None:
            return True
        self.stats["rate_limited"] += 1
        if request.method == "INVITE":
            self._reject_overload(request, addr, transport, empty.retry_after(), "rate limit")
        else:  # a scanner learns nothing from silence
            log_event(logger, "sip.rate_limited", logging.DEBUG, method=request.method,
                      peer=_peer(addr))
        return False

    def _reject_overload(self, request: Request, addr: Addr, transport: str, retry_after: int,
                         reason: str) -> None:
        # Stateless 503 (§21.5.4); Retry-After asks the peer to back off.
        self.stats["transactions_rejected"] += 1
        response = make_response(request, 503, to_tag=new_tag(),
                                 headers=[("Retry-After", str(retry_after))])
        self.send(response.to_bytes(), *_response_target(request.vias[0], addr, transport))
        log_event(logger, "sip.overload", logging.WARNING, call_id=request.call_id,
                  reason=reason, peer=_peer(addr), transactions=len(self.transactions))

    def _receive_response(self, response: Response, addr: Addr, now: float) -> None:
        self.stats["responses_received"] += 1
        if len(response.vias) != 1:
            # §8.1.3.3: a UAC discards a response with more than one Via (or none).
            self._drop("response Via count is not one", addr)
            return
        key = response_client_key(response)
        tx = self.transactions.get(key) if key is not None else None
        if not isinstance(tx, (ClientInviteTransaction, ClientNonInviteTransaction)):
            self.stats["stray_responses"] += 1
            self._drop("response matches no transaction", addr)
            return
        tx.on_response(response, now)
        self._after(tx)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _after(self, tx: Transaction) -> None:
        """Drop a terminated transaction from the table, or (re)arm its earliest timer."""
        if tx.state is TxState.TERMINATED:
            tx.scheduled = None
            if self.transactions.get(tx.key) is tx:
                del self.transactions[tx.key]
                self.emit(TransactionTerminated(tx.key))
        else:
            self._schedule(tx)

    def _schedule(self, item: Transaction | _PendingAck) -> None:
        deadline = item.next_deadline()
        if deadline != item.scheduled:
            item.scheduled = deadline
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, next(self._seq), item))

    def _pending_ack_timer(self, pending: _PendingAck, now: float) -> None:
        if pending.done:
            return
        due = [name for name, when in pending.timers.items() if when <= now]
        if "giveup" in due:
            pending.done = True
            pending.timers.clear()
            timeout = pending.timeout
            self.pending_acks.pop((timeout.call_id, timeout.cseq, timeout.local_tag), None)
            self.emit(timeout)
            log_event(logger, "sip.ack_timeout", logging.WARNING, call_id=timeout.call_id)
            return
        if "retransmit" in due:
            self.send(pending.data, pending.addr, pending.transport)
            self.stats["retransmissions"] += 1
            pending._interval = min(pending._interval * 2, self.timers.t2)
            pending.timers["retransmit"] = now + pending._interval
        self._schedule(pending)

    def _prepare(self, request: Request, transport: str) -> None:
        """Give an outgoing request a top Via (ours, with a fresh branch) and Max-Forwards."""
        items = list(request.headers)
        changed = False
        if "Via" not in request.headers:
            try:
                host, port = self.sent_by[transport]
            except KeyError:
                raise ValueError(f"no local sent-by configured for {transport}") from None
            host = f"[{host}]" if ":" in host else host
            via = f"SIP/2.0/{transport.upper()} {host}:{port};branch={new_branch()};rport"
            items.insert(0, ("Via", via))
            changed = True
        elif not is_rfc3261_branch(request.vias[0].branch):
            raise ValueError("the top Via needs an RFC 3261 branch (z9hG4bK...)")
        if "Max-Forwards" not in request.headers:
            items.append(("Max-Forwards", "70"))
            changed = True
        if changed:
            request.headers = Headers(items)


def _stamp_via(request: Request, vias: list[Via], addr: Addr) -> None:
    """Record where the request really came from in its top Via (§18.2.1, RFC 3581 §4)."""
    top = vias[0]
    host, port = addr
    if "rport" in top.params:
        top.params["rport"] = str(port)
        top.params["received"] = host
    elif not _same_host(top.host, host):
        top.params["received"] = host
    else:
        return
    items: list[tuple[str, str]] = []
    placed = False
    for name, value in request.headers:
        if name == "Via":
            if not placed:
                items += [("Via", str(via)) for via in vias]
                placed = True
            continue
        items.append((name, value))
    request.headers = Headers(items)


def _response_target(via: Via, addr: Addr, transport: str) -> tuple[Addr, str]:
    """Where a response goes (§18.2.2, RFC 3581 §4): the same connection on TCP/TLS; on UDP
    ``received``:``rport``, else ``received`` (or sent-by) with the sent-by port."""
    if transport in RELIABLE_TRANSPORTS:
        return addr, transport
    host = via.params.get("received") or via.host
    rport = via.params.get("rport")
    if rport and rport.isdigit():
        return (host, int(rport)), transport
    return (host, via.port or 5060), transport


def _same_host(via_host: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(via_host.strip("[]")) == ipaddress.ip_address(ip)
    except ValueError:
        return False


def _warning(reason: str) -> str:
    text = reason.replace("\\", "").replace('"', "'")[:120]
    return f'399 callgate "{text}"'


def _peer(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"
