"""RFC 3261 §17 transactions as sans-IO state machines, with the RFC 6026 "Accepted" state.

Each transaction sends bytes and reports events through a :class:`Sink` (the endpoint) and keeps
its timers as absolute deadlines in ``timers``; the endpoint calls :meth:`Transaction.handle_timer`
once the earliest deadline has passed. Retransmission timers (A, E, G) run only on unreliable
transports (§17.1.1.2, §17.1.2.2, §17.2.1); on TCP/TLS the "wait" timers (D, I, J, K) are zero,
so those transactions end at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from callgate.sip.events import (
    Addr,
    Event,
    ResponseReceived,
    TransactionTimeout,
    TxKey,
)
from callgate.sip.message import Headers, Request, Response

MAGIC_COOKIE = "z9hG4bK"
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls"})


class TxState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026 §7.1 (server) and §8.4 (client)
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """Timer values in seconds (RFC 3261 Table 4). ``timer_c`` ``None`` disables Timer C."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    timer_c: float | None = None

    @property
    def t64(self) -> float:
        """64*T1: Timers B, F, H, J, L, M and the 2xx-ACK wait."""
        return 64 * self.t1


class Sink(Protocol):
    """What a transaction needs from its endpoint."""

    def send(self, data: bytes, addr: Addr, transport: str) -> None: ...

    def emit(self, event: Event) -> None: ...


def is_rfc3261_branch(branch: str | None) -> bool:
    """True for a branch an RFC 3261 element made: the cookie plus something unique after it.

    A branch that is exactly the cookie (RFC 4475 §3.2.1 "badbranch") gets RFC 2543 matching.
    """
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


def _tx_method(method: str) -> str:
    # An ACK to a non-2xx final response belongs to the INVITE transaction (§17.2.3).
    return "INVITE" if method == "ACK" else method


def server_key(request: Request, method: str | None = None) -> TxKey:
    """The server-transaction key of ``request`` (§17.2.3); ``method`` overrides the CSeq method.

    With an RFC 3261 branch: branch + sent-by + method. Otherwise the RFC 2543 fields: To tag,
    Request-URI, From tag, Call-ID, CSeq number and the top Via (the To tag first: an ACK to an
    initial INVITE carries the tag of our response instead, see
    :meth:`ServerInviteTransaction.legacy_match`).
    """
    via = request.vias[0]
    name = _tx_method(method or request.method)
    if is_rfc3261_branch(via.branch):
        sent_by = f"{via.host.lower()}:{via.port or ''}"
        return TxKey(True, name, via.branch or "", sent_by)
    legacy = (
        request.to.tag or "",
        str(request.uri),
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        str(via),
    )
    return TxKey(True, name, "", "", legacy)


def client_key(branch: str, method: str) -> TxKey:
    """The client-transaction key (§17.1.3): our branch + the CSeq method."""
    return TxKey(False, _tx_method(method), branch)


def response_client_key(response: Response) -> TxKey | None:
    """The client key a response matches, or ``None`` if its top Via has no branch."""
    vias = response.vias
    branch = vias[0].branch if vias else None
    if not branch:
        return None
    return client_key(branch, response.cseq.method)


class Transaction:
    """Common parts: state, named timer deadlines, the peer and the transport.

    A server transaction outlives its call by up to 64*T1 (32 s on UDP) to absorb
    retransmissions, so it keeps the bytes it may resend, not the parsed request: at a few
    hundred calls a second, tens of thousands of parsed messages kept alive made every full
    pass of the garbage collector a 150-700 ms stall of the event loop. A client INVITE
    transaction keeps its request, to build the ACK of a non-2xx answer.
    """

    method: str

    def __init__(self, key: TxKey, addr: Addr, transport: str, config: TimerConfig,
                 sink: Sink) -> None:
        self.key = key
        self.addr = addr
        self.transport = transport
        self.reliable = transport in RELIABLE_TRANSPORTS
        self.config = config
        self.sink = sink
        self.state = TxState.TRYING
        self.timers: dict[str, float] = {}
        self.scheduled: float | None = None  # owned by the endpoint's timer heap

    def next_deadline(self) -> float | None:
        return min(self.timers.values()) if self.timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline has passed, earliest first."""
        for name, when in sorted(self.timers.items(), key=lambda item: item[1]):
            if when > now or self.state is TxState.TERMINATED:
                break
            if self.timers.get(name) == when:
                del self.timers[name]
                self._fire(name, now)

    def transport_error(self) -> None:
        """The transport could not deliver (§17.1.1.2, §17.1.2.2, §17.2.4): tell the TU."""
        if self.state is not TxState.TERMINATED:
            self.sink.emit(TransactionTimeout(self.key, self.method, "transport"))
            self._terminate()

    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _transmit(self, data: bytes) -> None:
        self.sink.send(data, self.addr, self.transport)

    def _terminate(self) -> None:
        self.state = TxState.TERMINATED
        self.timers.clear()

    def _wait_then_end(self, name: str, delay: float, now: float) -> None:
        # Timers D, I, J, K are zero on reliable transports: the transaction ends right away.
        if delay <= 0:
            self._terminate()
        else:
            self.timers[name] = now + delay

    def _timeout(self, timer: str) -> None:
        self.sink.emit(TransactionTimeout(self.key, self.method, timer))
        self._terminate()


class ClientInviteTransaction(Transaction):
    """§17.1.1 (Figure 5) with RFC 6026 §8.4: Calling → Proceeding → Accepted/Completed."""

    method = "INVITE"

    def __init__(self, key: TxKey, request: Request, addr: Addr, transport: str,
                 config: TimerConfig, sink: Sink, now: float) -> None:
        super().__init__(key, addr, transport, config, sink)
        self.request = request  # for the ACK of a non-2xx final response
        self.state = TxState.CALLING
        self._data = request.to_bytes()
        self._interval = config.t1
        self._ack: bytes | None = None
        self._transmit(self._data)
        if not self.reliable:
            self.timers["A"] = now + config.t1
        self.timers["B"] = now + config.t64

    def on_response(self, response: Response, now: float) -> None:
        status, state = response.status, self.state
        if state is TxState.TERMINATED:
            return
        if status < 200:
            if state in (TxState.CALLING, TxState.PROCEEDING):
                if state is TxState.CALLING:
                    self.state = TxState.PROCEEDING
                    self.timers.pop("A", None)
                    self.timers.pop("B", None)
                if self.config.timer_c is not None:
                    # Timer C restarts on every provisional response (§16.6 step 11).
                    self.timers["C"] = now + self.config.timer_c
                self.sink.emit(ResponseReceived(response, self.key))
        elif status < 300:
            if state in (TxState.CALLING, TxState.PROCEEDING):
                # RFC 6026 §8.4: stay around so 2xx retransmissions and forks reach the TU.
                self.state = TxState.ACCEPTED
                self.timers.clear()
                self.timers["M"] = now + self.config.t64
                self.sink.emit(ResponseReceived(response, self.key))
            elif state is TxState.ACCEPTED:
                self.sink.emit(ResponseReceived(response, self.key))
        elif state in (TxState.CALLING, TxState.PROCEEDING):
            self._ack = build_non2xx_ack(self.request, response).to_bytes()
            self._transmit(self._ack)
            self.state = TxState.COMPLETED
            self.timers.clear()
            self.sink.emit(ResponseReceived(response, self.key))
            self._wait_then_end("D", 0 if self.reliable else self.config.timer_d, now)
        elif state is TxState.COMPLETED and self._ack is not None:
            # A retransmitted final response: the ACK was lost (§17.1.1.2).
            self._transmit(self._ack)

    def _fire(self, name: str, now: float) -> None:
        if name == "A" and self.state is TxState.CALLING:
            # Timer A doubles without the T2 cap (§17.1.1.2), unlike E and G.
            self._transmit(self._data)
            self._interval *= 2
            self.timers["A"] = now + self._interval
        elif name == "B":
            self._timeout("B")
        elif name == "C" and self.state is TxState.PROCEEDING:
            # Let the TU CANCEL; if nothing final arrives within 64*T1 more, give up (§16.8).
            self.sink.emit(TransactionTimeout(self.key, self.method, "C"))
            self.timers["B"] = now + self.config.t64
        elif name in ("D", "M"):
            self._terminate()


def build_non2xx_ack(request: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3)."""
    items: list[tuple[str, str]] = [("Via", str(request.vias[0]))]
    items += [("Route", route) for route in request.headers.get_all("Route")]
    items += [
        ("Max-Forwards", "70"),
        ("From", request.headers.get("From") or ""),
        ("To", response.headers.get("To") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.seq} ACK"),
    ]
    return Request("ACK", request.uri, Headers(items), b"")


def build_cancel(request: Request) -> Request:
    """A CANCEL for our pending ``request`` (§9.1): same Request-URI, Call-ID, From, To, CSeq
    number, Route and top Via (so it carries the INVITE's branch). Send it with
    ``SipEndpoint.send_request`` once a provisional response has arrived."""
    items: list[tuple[str, str]] = [("Via", str(request.vias[0]))]
    items += [("Route", route) for route in request.headers.get_all("Route")]
    items += [
        ("Max-Forwards", "70"),
        ("From", request.headers.get("From") or ""),
        ("To", request.headers.get("To") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.seq} CANCEL"),
    ]
    return Request("CANCEL", request.uri, Headers(items), b"")


class ClientNonInviteTransaction(Transaction):
    """§17.1.2 (Figure 6): Trying → Proceeding → Completed → Terminated."""

    def __init__(self, key: TxKey, request: Request, addr: Addr, transport: str,
                 config: TimerConfig, sink: Sink, now: float) -> None:
        super().__init__(key, addr, transport, config, sink)
        self.method = request.method
        self._data = request.to_bytes()
        self._interval = config.t1
        self._transmit(self._data)
        if not self.reliable:
            self.timers["E"] = now + config.t1
        self.timers["F"] = now + config.t64

    def on_response(self, response: Response, now: float) -> None:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return  # Completed absorbs retransmitted final responses (§17.1.2.2)
        if response.status < 200:
            self.state = TxState.PROCEEDING
        else:
            self.state = TxState.COMPLETED
            self.timers.clear()
            self._wait_then_end("K", 0 if self.reliable else self.config.t4, now)
        self.sink.emit(ResponseReceived(response, self.key))

    def _fire(self, name: str, now: float) -> None:
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self._transmit(self._data)
            # Trying doubles up to T2; once a provisional arrived, retransmit every T2.
            if self.state is TxState.TRYING:
                self._interval = min(self._interval * 2, self.config.t2)
            else:
                self._interval = self.config.t2
            self.timers["E"] = now + self._interval
        elif name == "F":
            self._timeout("F")
        elif name == "K":
            self._terminate()


class ServerInviteTransaction(Transaction):
    """§17.2.1 (Figure 7) with RFC 6026 §7.1: Proceeding → Accepted or Completed → Confirmed."""

    method = "INVITE"

    def __init__(self, key: TxKey, request: Request, addr: Addr, transport: str,
                 config: TimerConfig, sink: Sink) -> None:
        super().__init__(key, addr, transport, config, sink)
        self.state = TxState.PROCEEDING
        self._invite_to_tag = request.to.tag
        self.to_tag: str | None = None  # the To tag of our last response
        self._last: bytes | None = None
        self._interval = config.t1

    @property
    def pending(self) -> bool:
        """No final response yet: a CANCEL still has an effect (§9.2)."""
        return self.state is TxState.PROCEEDING

    def legacy_match(self, request: Request) -> bool:
        """The To-tag part of RFC 2543 matching (§17.2.3), for keys without a cookie branch."""
        if not self.key.legacy or request.method != "ACK":
            return True  # the key itself already compared every other field
        tag = request.to.tag
        return tag == self.to_tag or tag == self._invite_to_tag

    def on_request(self, request: Request, now: float) -> None:
        """A retransmission of the INVITE: repeat the last response (§17.2.1)."""
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self._last is not None:
            self._transmit(self._last)

    def on_ack(self, now: float) -> bool:
        """An ACK matched this transaction; returns True when the TU must see it (2xx ACK)."""
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.timers.clear()
            self._wait_then_end("I", 0 if self.reliable else self.config.t4, now)
            return False
        return self.state is TxState.ACCEPTED

    def send_response(self, response: Response, now: float) -> bool:
        """Send a response from the TU; False if the transaction can no longer take it."""
        status = response.status
        if self.state is TxState.ACCEPTED and 200 <= status < 300:
            self._transmit(response.to_bytes())  # RFC 6026 §7.1: the TU's 2xx pass through
            return True
        if self.state is not TxState.PROCEEDING:
            return False
        data = response.to_bytes()
        self.to_tag = response.to.tag or self.to_tag
        self._transmit(data)
        if status < 200:
            self._last = data
        elif status < 300:
            self.state = TxState.ACCEPTED
            self.timers["L"] = now + self.config.t64
        else:
            self._last = data
            self.state = TxState.COMPLETED
            if not self.reliable:
                self.timers["G"] = now + self.config.t1
            self.timers["H"] = now + self.config.t64
        return True

    def _fire(self, name: str, now: float) -> None:
        if name == "G" and self.state is TxState.COMPLETED and self._last is not None:
            self._transmit(self._last)
            self._interval = min(self._interval * 2, self.config.t2)
            self.timers["G"] = now + self._interval
        elif name == "H":
            self._timeout("H")
        elif name in ("I", "L"):
            self._terminate()


class ServerNonInviteTransaction(Transaction):
    """§17.2.2 (Figure 8): Trying → Proceeding → Completed → Terminated.

    The "guard" timer is ours, not the RFC's: a TU that never answers would leave the
    transaction behind forever; after 64*T1 the client has given up anyway (Timer F).
    """

    def __init__(self, key: TxKey, request: Request, addr: Addr, transport: str,
                 config: TimerConfig, sink: Sink, now: float) -> None:
        super().__init__(key, addr, transport, config, sink)
        self.method = request.method
        self._last: bytes | None = None
        self.timers["guard"] = now + config.t64

    def on_request(self, request: Request, now: float) -> None:
        """A retransmission: absorbed in Trying, answered with the last response later."""
        if self._last is not None and self.state in (TxState.PROCEEDING, TxState.COMPLETED):
            self._transmit(self._last)

    def send_response(self, response: Response, now: float) -> bool:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return False
        self._last = response.to_bytes()
        self._transmit(self._last)
        if response.status < 200:
            self.state = TxState.PROCEEDING
        else:
            self.state = TxState.COMPLETED
            self.timers.clear()
            self._wait_then_end("J", 0 if self.reliable else self.config.t64, now)
        return True

    def _fire(self, name: str, now: float) -> None:
        if name == "guard" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self._timeout("guard")
        elif name == "J":
            self._terminate()


ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction
