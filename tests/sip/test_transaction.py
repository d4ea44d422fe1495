"""RFC 3261 §17 state machines driven directly, with a recording sink and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from callgate.sip.events import Addr, Event, ResponseReceived, TransactionTimeout, TxKey
from callgate.sip.headers import Headers
from callgate.sip.message import Request, Response, make_response, parse_message
from callgate.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    TimerConfig,
    Transaction,
    TxState,
    build_non2xx_ack,
    client_key,
    is_rfc3261_branch,
    server_key,
)
from callgate.sip.uri import SipUri

PEER: Addr = ("192.0.2.7", 5060)
CONFIG = TimerConfig()


@dataclass
class Sink:
    sent: list[tuple[bytes, Addr, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def send(self, data: bytes, addr: Addr, transport: str) -> None:
        self.sent.append((data, addr, transport))

    def emit(self, event: Event) -> None:
        self.events.append(event)


def request(method: str = "INVITE", branch: str = "z9hG4bKtx1", *, to_tag: str = "",
            route: str | None = None) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.org>;tag=a1",
        f"To: {to}",
        "Call-ID: call-1@example.org",
        f"CSeq: 7 {method}",
    ]
    if route:
        lines.append(f"Route: {route}")
    raw = "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()
    message = parse_message(raw)
    assert isinstance(message, Request)
    return message


def response(req: Request, status: int, to_tag: str = "b1") -> Response:
    return make_response(req, status, to_tag=to_tag)


def run_until(tx: Transaction, end: float) -> list[float]:
    """Fire the transaction's timers in deadline order up to ``end``; returns the fire times."""
    fired: list[float] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= end:
        fired.append(deadline)
        tx.handle_timer(deadline)
    return fired


def client_invite(sink: Sink, transport: str = "udp", config: TimerConfig = CONFIG,
                  req: Request | None = None) -> ClientInviteTransaction:
    req = req or request()
    key = client_key(req.vias[0].branch or "", "INVITE")
    return ClientInviteTransaction(key, req, PEER, transport, config, sink, 0.0)


def client_non_invite(sink: Sink, transport: str = "udp") -> ClientNonInviteTransaction:
    req = request("BYE", to_tag="b1")
    key = client_key(req.vias[0].branch or "", "BYE")
    return ClientNonInviteTransaction(key, req, PEER, transport, CONFIG, sink, 0.0)


def state(tx: Transaction) -> TxState:
    # A function call, so that mypy does not narrow the state across transitions.
    return tx.state


def timeouts(sink: Sink) -> list[str]:
    return [e.timer for e in sink.events if isinstance(e, TransactionTimeout)]


# -- keys ------------------------------------------------------------------------------------


def test_branch_needs_cookie_and_something_after_it() -> None:
    assert is_rfc3261_branch("z9hG4bK776asdhds")
    assert not is_rfc3261_branch("z9hG4bK")  # RFC 4475 badbranch
    assert not is_rfc3261_branch("abc123")
    assert not is_rfc3261_branch(None)


def test_server_key_folds_ack_into_invite_and_keeps_cancel_apart() -> None:
    invite, ack, cancel = request(), request("ACK"), request("CANCEL")
    assert server_key(ack) == server_key(invite)
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel, "INVITE") == server_key(invite)
    assert server_key(invite) == TxKey(True, "INVITE", "z9hG4bKtx1", "192.0.2.1:5060")


def test_legacy_key_uses_rfc2543_fields() -> None:
    key = server_key(request(branch="z9hG4bK"))
    assert key.branch == "" and key.legacy
    assert "call-1@example.org" in key.legacy
    other_call = server_key(request(branch="z9hG4bK"))
    assert other_call == key


# -- INVITE client (§17.1.1) -------------------------------------------------------------------


def test_invite_client_timer_a_doubles_without_cap_then_timer_b() -> None:
    sink = Sink()
    tx = client_invite(sink)
    fired = run_until(tx, 100.0)
    # A at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (no T2 cap for INVITE), then B at 64*T1 = 32.
    assert fired == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert len(sink.sent) == 7
    assert all(data == sink.sent[0][0] for data, _, _ in sink.sent)
    assert timeouts(sink) == ["B"]
    assert state(tx) is TxState.TERMINATED


def test_invite_client_over_tcp_does_not_retransmit() -> None:
    sink = Sink()
    tx = client_invite(sink, "tcp")
    assert run_until(tx, 100.0) == [32.0]
    assert len(sink.sent) == 1
    assert timeouts(sink) == ["B"]


def test_invite_client_timers_follow_configured_t1() -> None:
    sink = Sink()
    tx = client_invite(sink, config=TimerConfig(t1=0.1, t2=0.4))
    assert run_until(tx, 100.0)[-1] == pytest.approx(6.4)
    assert timeouts(sink) == ["B"]


def test_invite_client_provisional_stops_a_and_b() -> None:
    sink = Sink()
    tx = client_invite(sink)
    tx.on_response(response(tx.request, 180), 0.2)
    assert state(tx) is TxState.PROCEEDING
    assert tx.next_deadline() is None
    assert [type(e) for e in sink.events] == [ResponseReceived]


def test_invite_client_non2xx_acks_and_absorbs_retransmissions() -> None:
    sink = Sink()
    req = request(route="<sip:proxy.example.com;lr>")
    tx = client_invite(sink, req=req)
    tx.on_response(response(req, 180), 0.1)
    busy = response(req, 486)
    tx.on_response(busy, 0.2)
    assert state(tx) is TxState.COMPLETED
    ack = parse_message(sink.sent[-1][0])
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert str(ack.cseq) == "7 ACK"
    assert ack.to.tag == "b1"
    assert ack.vias[0].branch == "z9hG4bKtx1"  # the same transaction (§17.1.1.3)
    assert ack.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    assert ack.uri == req.uri
    tx.on_response(busy, 1.0)  # retransmitted 486: ACK again, TU not told twice
    assert sink.sent[-1][0] == sink.sent[-2][0]
    assert sum(isinstance(e, ResponseReceived) for e in sink.events) == 2
    assert run_until(tx, 100.0) == [32.2]  # Timer D
    assert state(tx) is TxState.TERMINATED and timeouts(sink) == []


def test_invite_client_non2xx_over_tcp_terminates_at_once() -> None:
    sink = Sink()
    tx = client_invite(sink, "tcp")
    tx.on_response(response(tx.request, 503), 0.1)
    assert state(tx) is TxState.TERMINATED


def test_invite_client_accepted_state_passes_2xx_retransmissions() -> None:
    sink = Sink()
    tx = client_invite(sink)
    ok = response(tx.request, 200)
    tx.on_response(ok, 0.3)
    assert state(tx) is TxState.ACCEPTED
    tx.on_response(ok, 0.8)
    assert sum(isinstance(e, ResponseReceived) for e in sink.events) == 2
    assert len(sink.sent) == 1  # the transaction never ACKs a 2xx itself
    assert run_until(tx, 100.0) == [32.3]  # RFC 6026 Timer M
    assert state(tx) is TxState.TERMINATED


def test_invite_client_timer_c() -> None:
    sink = Sink()
    tx = client_invite(sink, config=TimerConfig(timer_c=180.0))
    tx.on_response(response(tx.request, 180), 1.0)
    tx.on_response(response(tx.request, 183), 10.0)  # restarts C
    assert run_until(tx, 200.0) == [190.0]
    assert timeouts(sink) == ["C"]
    assert state(tx) is TxState.PROCEEDING  # the TU may now CANCEL
    assert run_until(tx, 300.0) == [222.0]
    assert timeouts(sink) == ["C", "B"]


def test_non2xx_ack_carries_only_the_top_via() -> None:
    raw = (b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
           b"Via: SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\n"
           b"Call-ID: x\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n")
    req = parse_message(raw)
    assert isinstance(req, Request)
    ack = build_non2xx_ack(req, make_response(req, 404, to_tag="t"))
    assert [str(v) for v in ack.vias] == ["SIP/2.0/UDP a;branch=z9hG4bK1"]


# -- non-INVITE client (§17.1.2) ---------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_then_timer_f() -> None:
    sink = Sink()
    tx = client_non_invite(sink)
    fired = run_until(tx, 100.0)
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert len(sink.sent) == 11
    assert timeouts(sink) == ["F"]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    sink = Sink()
    tx = client_non_invite(sink)
    tx.handle_timer(0.5)
    tx.on_response(response(request("BYE", to_tag="b1"), 100), 0.6)
    assert state(tx) is TxState.PROCEEDING
    assert run_until(tx, 10.0) == [1.5, 5.5, 9.5]


def test_non_invite_client_completed_absorbs_then_timer_k() -> None:
    sink = Sink()
    tx = client_non_invite(sink)
    ok = response(request("BYE", to_tag="b1"), 200)
    tx.on_response(ok, 0.2)
    tx.on_response(ok, 0.4)
    assert sum(isinstance(e, ResponseReceived) for e in sink.events) == 1
    assert run_until(tx, 100.0) == [5.2]  # Timer K = T4
    assert state(tx) is TxState.TERMINATED


def test_non_invite_client_over_tcp() -> None:
    sink = Sink()
    tx = client_non_invite(sink, "tls")
    assert tx.next_deadline() == 32.0  # F only
    tx.on_response(response(request("BYE", to_tag="b1"), 200), 0.2)
    assert state(tx) is TxState.TERMINATED  # K = 0


def test_transport_error_fails_the_transaction() -> None:
    sink = Sink()
    tx = client_non_invite(sink, "tcp")
    tx.transport_error()
    assert timeouts(sink) == ["transport"]
    assert state(tx) is TxState.TERMINATED


# -- INVITE server (§17.2.1, RFC 6026) ---------------------------------------------------------


def server_invite(sink: Sink, transport: str = "udp"
                  ) -> tuple[ServerInviteTransaction, Request]:
    req = request()
    return ServerInviteTransaction(server_key(req), req, PEER, transport, CONFIG, sink), req


def test_invite_server_repeats_last_provisional_on_retransmission() -> None:
    sink = Sink()
    tx, req = server_invite(sink)
    tx.on_request(req, 0.1)
    assert sink.sent == []  # nothing sent yet, nothing to repeat
    assert tx.send_response(response(req, 180), 0.2)
    tx.on_request(req, 0.7)
    assert len(sink.sent) == 2 and sink.sent[0] == sink.sent[1]


def test_invite_server_timer_g_caps_at_t2_and_timer_h() -> None:
    sink = Sink()
    tx, req = server_invite(sink)
    tx.send_response(response(req, 486), 0.0)
    fired = run_until(tx, 100.0)
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert len(sink.sent) == 11
    assert timeouts(sink) == ["H"]


def test_invite_server_ack_confirms_then_timer_i() -> None:
    sink = Sink()
    tx, req = server_invite(sink)
    tx.send_response(response(req, 404), 0.0)
    tx.on_request(req, 0.2)  # INVITE retransmission: the 404 again
    assert len(sink.sent) == 2
    assert tx.on_ack(0.3) is False
    assert state(tx) is TxState.CONFIRMED
    assert tx.on_ack(0.4) is False  # absorbed
    assert run_until(tx, 100.0) == [5.3]  # Timer I = T4
    assert len(sink.sent) == 2 and timeouts(sink) == []


def test_invite_server_over_tcp_ends_on_ack() -> None:
    sink = Sink()
    tx, req = server_invite(sink, "tcp")
    tx.send_response(response(req, 603), 0.0)
    assert tx.next_deadline() == 32.0  # H only, no G
    tx.on_ack(0.1)
    assert state(tx) is TxState.TERMINATED


def test_invite_server_accepted_state() -> None:
    sink = Sink()
    tx, req = server_invite(sink)
    ok = response(req, 200)
    assert tx.send_response(ok, 0.0)
    assert state(tx) is TxState.ACCEPTED and not tx.pending
    tx.on_request(req, 0.5)  # RFC 6026 §7.1: INVITE retransmission absorbed silently
    assert len(sink.sent) == 1
    assert tx.on_ack(0.6) is True  # ACK to a 2xx goes to the TU
    assert tx.send_response(ok, 0.7)  # the TU's 2xx retransmission passes
    assert not tx.send_response(response(req, 486), 0.8)  # no second final
    assert run_until(tx, 100.0) == [32.0]  # Timer L
    assert state(tx) is TxState.TERMINATED


def test_a_server_transaction_keeps_bytes_not_the_parsed_messages() -> None:
    # It lives 32 s after its call to absorb retransmissions: parsed messages kept that long
    # are what the cyclic GC must walk on every full pass.
    sink = Sink()
    invite, req = server_invite(sink)
    invite.send_response(response(req, 200), 0.0)
    bye, bye_req = server_non_invite(sink)
    bye.send_response(response(bye_req, 200), 0.0)
    for tx in (invite, bye):
        kept = [value for value in vars(tx).values()
                if isinstance(value, Request | Response | Headers | SipUri)]
        assert kept == [], type(tx).__name__


# -- non-INVITE server (§17.2.2) ---------------------------------------------------------------


def server_non_invite(sink: Sink, transport: str = "udp"
                      ) -> tuple[ServerNonInviteTransaction, Request]:
    req = request("OPTIONS")
    return (ServerNonInviteTransaction(server_key(req), req, PEER, transport, CONFIG, sink, 0.0),
            req)


def test_non_invite_server_lifecycle_and_timer_j() -> None:
    sink = Sink()
    tx, req = server_non_invite(sink)
    tx.on_request(req, 0.1)  # Trying: absorbed
    assert sink.sent == []
    tx.send_response(response(req, 100), 0.2)
    assert state(tx) is TxState.PROCEEDING
    tx.on_request(req, 0.3)
    assert sink.sent[1] == sink.sent[0]
    tx.send_response(response(req, 200), 1.0)
    assert state(tx) is TxState.COMPLETED
    tx.on_request(req, 2.0)
    assert sink.sent[-1] == sink.sent[-2] and b"200 OK" in sink.sent[-1][0]
    assert not tx.send_response(response(req, 500), 2.1)
    assert run_until(tx, 100.0) == [33.0]  # Timer J = 64*T1 after the final response
    assert state(tx) is TxState.TERMINATED and timeouts(sink) == []


def test_non_invite_server_over_tcp_ends_with_final() -> None:
    sink = Sink()
    tx, req = server_non_invite(sink, "tcp")
    tx.send_response(response(req, 200), 0.0)
    assert state(tx) is TxState.TERMINATED


def test_non_invite_server_guard_when_tu_never_answers() -> None:
    sink = Sink()
    tx, _ = server_non_invite(sink)
    assert run_until(tx, 100.0) == [32.0]
    assert timeouts(sink) == ["guard"]
    assert state(tx) is TxState.TERMINATED
