"""SipEndpoint, sans-IO: bytes and a fake clock in, events and datagrams out."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.sip.endpoint import SipEndpoint
from callgate.sip.events import (
    AckReceived,
    AckTimeout,
    Addr,
    CancelReceived,
    Event,
    MessageDropped,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
    TxKey,
)
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    make_response,
    parse_message,
    parse_uri,
)
from callgate.sip.transaction import TimerConfig, build_cancel

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
PEER: Addr = ("203.0.113.5", 5062)
LOCAL: Addr = ("192.0.2.10", 5060)


def msg(method: str = "INVITE", *, branch: str = "z9hG4bKc1", call_id: str = "call-1",
        cseq: int = 1, cseq_method: str | None = None, to_tag: str = "",
        via_host: str = "203.0.113.5:5062", rport: bool = False, transport: str = "UDP") -> bytes:
    to = "<sip:proj@192.0.2.10>" + (f";tag={to_tag}" if to_tag else "")
    via = f"SIP/2.0/{transport} {via_host};branch={branch}" + (";rport" if rport else "")
    lines = [
        f"{method} sip:proj@192.0.2.10 SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        "From: \"Alice\" <sip:alice@example.org>;tag=from1",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@203.0.113.5:5062>",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def drain(ep: SipEndpoint) -> list[Event]:
    out: list[Event] = []
    while (event := ep.next_event()) is not None:
        out.append(event)
    return out


def sent(ep: SipEndpoint) -> list[tuple[Request | Response, Addr, str]]:
    return [(parse_message(data), addr, t) for data, addr, t in ep.datagrams_to_send()]


def statuses(ep: SipEndpoint) -> list[int]:
    return [m.status for m, _, _ in sent(ep) if isinstance(m, Response)]


def run_timers(ep: SipEndpoint, until: float) -> None:
    while (deadline := ep.get_timer()) is not None and deadline <= until:
        ep.handle_timer(deadline)


def incoming(ep: SipEndpoint, data: bytes | None = None, now: float = 0.0,
             transport: str = "udp") -> RequestReceived:
    ep.receive(data or msg(), PEER, transport, now)
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], RequestReceived), events
    return events[0]


def new_endpoint(**kwargs: object) -> SipEndpoint:
    return SipEndpoint(sent_by={"udp": LOCAL, "tcp": LOCAL}, **kwargs)  # type: ignore[arg-type]


# -- INVITE server side ------------------------------------------------------------------------


def test_invite_gets_100_trying_and_event() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    assert ev.request.method == "INVITE" and ev.addr == PEER and ev.transport == "udp"
    out = sent(ep)
    assert len(out) == 1
    trying, addr, transport = out[0]
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None
    assert (addr, transport) == (("203.0.113.5", 5062), "udp")
    assert len(ep.transactions) == 1


def test_retransmitted_invite_is_absorbed_and_answered_with_last_provisional() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    first_trying = ep.datagrams_to_send()
    ep.receive(msg(), PEER, "udp", 0.5)
    assert drain(ep) == []
    assert ep.datagrams_to_send() == first_trying  # the same 100 again
    ringing = make_response(ev.request, 180, to_tag="uas1")
    assert ep.send_response(ev.tx_key, ringing, 0.6)
    assert statuses(ep) == [180]
    ep.receive(msg(), PEER, "udp", 1.0)
    ep.receive(msg(), PEER, "udp", 2.0)
    assert statuses(ep) == [180, 180]
    assert drain(ep) == []
    assert ep.stats["retransmissions_absorbed"] == 3


def test_2xx_is_retransmitted_until_ack() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.datagrams_to_send()
    ok = make_response(ev.request, 200, to_tag="uas1")
    ep.send_response(ev.tx_key, ok, 0.0)
    assert statuses(ep) == [200]
    times = []
    while (deadline := ep.get_timer()) is not None and deadline < 10:
        ep.handle_timer(deadline)
        if ep.datagrams_to_send():
            times.append(deadline)
    assert times == [0.5, 1.5, 3.5, 7.5]  # T1 doubling, capped at T2 = 4 (§13.3.1.4)
    ep.receive(msg("ACK", branch="z9hG4bKack1", to_tag="uas1"), PEER, "udp", 9.0)
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], AckReceived)
    assert events[0].request.method == "ACK"
    run_timers(ep, 1000.0)
    assert ep.datagrams_to_send() == []  # no more 2xx after the ACK
    assert [type(e) for e in drain(ep)] == [TransactionTerminated]  # Timer L
    assert len(ep.transactions) == 0 and not ep.pending_acks
    assert ep.get_timer() is None


def test_2xx_never_acked_gives_ack_timeout() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="uas1"), 0.0)
    ep.datagrams_to_send()
    run_timers(ep, 31.9)
    assert not any(isinstance(e, AckTimeout) for e in drain(ep))
    retransmits = len(ep.datagrams_to_send())
    assert retransmits == 10  # 0.5 1.5 3.5 7.5 11.5 ... 31.5
    run_timers(ep, 32.0)
    events = drain(ep)
    assert AckTimeout("call-1", "uas1", "from1", 1) in events
    assert len(ep.transactions) == 0 and not ep.pending_acks


def test_2xx_over_tcp_is_not_retransmitted_but_still_times_out() -> None:
    ep = new_endpoint()
    ev = incoming(ep, msg(transport="TCP"), transport="tcp")
    ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="t"), 0.0)
    assert [(a, t) for _, a, t in sent(ep)] == [(PEER, "tcp")] * 2  # 100 and 200
    run_timers(ep, 100.0)
    assert ep.datagrams_to_send() == []
    assert any(isinstance(e, AckTimeout) for e in drain(ep))


def test_ack_for_a_different_to_tag_does_not_stop_retransmission() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="uas1"), 0.0)
    ep.receive(msg("ACK", branch="z9hG4bKa", to_tag="other"), PEER, "udp", 0.1)
    assert len(ep.pending_acks) == 1
    ep.receive(msg("ACK", branch="z9hG4bKa", to_tag="uas1", cseq=2), PEER, "udp", 0.2)
    assert len(ep.pending_acks) == 1  # CSeq must match too
    ep.receive(msg("ACK", branch="z9hG4bKa", to_tag="uas1"), PEER, "udp", 0.3)
    assert not ep.pending_acks


def test_non2xx_final_ack_is_absorbed_by_the_transaction() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.send_response(ev.tx_key, make_response(ev.request, 486, to_tag="t"), 0.0)
    ep.receive(msg("ACK", to_tag="t"), PEER, "udp", 0.2)  # same branch: hop-by-hop ACK
    assert drain(ep) == []
    assert ep.stats["acks_absorbed"] == 1
    ep.datagrams_to_send()
    run_timers(ep, 100.0)
    assert ep.datagrams_to_send() == []  # Confirmed: no more Timer G retransmissions
    assert len(ep.transactions) == 0


def test_non2xx_never_acked_times_out_with_timer_h() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.send_response(ev.tx_key, make_response(ev.request, 480, to_tag="t"), 0.0)
    run_timers(ep, 100.0)
    events = drain(ep)
    assert TransactionTimeout(ev.tx_key, "INVITE", "H") in events
    assert TransactionTerminated(ev.tx_key) in events


# -- CANCEL (§9.2) -----------------------------------------------------------------------------


def test_cancel_of_pending_invite() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.datagrams_to_send()
    ep.receive(msg("CANCEL"), PEER, "udp", 1.0)
    out = sent(ep)
    assert len(out) == 1
    cancel_ok = out[0][0]
    assert isinstance(cancel_ok, Response) and cancel_ok.status == 200
    assert cancel_ok.cseq.method == "CANCEL"
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], CancelReceived)
    assert events[0].invite_tx_key == ev.tx_key
    # The retransmitted CANCEL gets the same 200, and no second event.
    ep.receive(msg("CANCEL"), PEER, "udp", 1.5)
    assert statuses(ep) == [200] and drain(ep) == []
    ep.send_response(ev.tx_key, make_response(ev.request, 487, to_tag="t"), 1.6)
    assert statuses(ep) == [487]
    ep.receive(msg("ACK", to_tag="t"), PEER, "udp", 1.7)
    run_timers(ep, 1000.0)
    assert len(ep.transactions) == 0


def test_unmatched_cancel_gets_481() -> None:
    ep = new_endpoint()
    ep.receive(msg("CANCEL", branch="z9hG4bKnothere"), PEER, "udp", 0.0)
    assert statuses(ep) == [481]
    assert drain(ep) == []
    run_timers(ep, 100.0)
    assert len(ep.transactions) == 0


def test_cancel_after_final_response_is_200_without_event() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="t"), 0.0)
    ep.datagrams_to_send()
    ep.receive(msg("CANCEL"), PEER, "udp", 0.1)
    out = sent(ep)
    assert [m.status for m, _, _ in out if isinstance(m, Response)] == [200]
    assert isinstance(out[0][0], Response) and out[0][0].to.tag == "t"  # §9.2 same To tag
    assert not any(isinstance(e, CancelReceived) for e in drain(ep))


# -- non-INVITE server -------------------------------------------------------------------------


def test_bye_retransmission_gets_the_final_response_again() -> None:
    ep = new_endpoint()
    ev = incoming(ep, msg("BYE", to_tag="t", cseq=2))
    assert ep.datagrams_to_send() == []  # no 100 for non-INVITE
    ep.send_response(ev.tx_key, make_response(ev.request, 200), 0.1)
    assert statuses(ep) == [200]
    ep.receive(msg("BYE", to_tag="t", cseq=2), PEER, "udp", 1.0)
    assert statuses(ep) == [200] and drain(ep) == []
    run_timers(ep, 32.0)
    assert len(ep.transactions) == 1  # Timer J = 64*T1 from 0.1
    run_timers(ep, 32.2)
    assert len(ep.transactions) == 0


def test_send_response_to_unknown_transaction_returns_false() -> None:
    ep = new_endpoint()
    req = parse_message(msg())
    assert isinstance(req, Request)
    assert not ep.send_response(TxKey(True, "INVITE", "z9hG4bKgone"), make_response(req, 200), 0)


# -- parse errors ------------------------------------------------------------------------------


def test_bad_request_gets_400_when_answerable() -> None:
    ep = new_endpoint()
    bad = msg().replace(b"Max-Forwards: 70", b"Max-Forwards: 300")
    ep.receive(bad, PEER, "udp", 0.0)
    out = sent(ep)
    assert len(out) == 1
    resp = out[0][0]
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.headers.get("Warning") is not None
    assert ep.stats["parse_errors"] == 1 and ep.stats["error_responses_sent"] == 1
    assert len(ep.transactions) == 0


def test_bad_version_gets_505() -> None:
    ep = new_endpoint()
    ep.receive(msg().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), PEER, "udp", 0.0)
    assert statuses(ep) == [505]


def test_garbage_and_bad_responses_are_dropped() -> None:
    ep = new_endpoint()
    ep.receive(b"\x00\x01 hello", PEER, "udp", 0.0)
    ep.receive(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n\r\n", PEER, "udp", 0)
    assert ep.datagrams_to_send() == []
    events = drain(ep)
    assert len(events) == 2 and all(isinstance(e, MessageDropped) for e in events)
    assert ep.stats["parse_errors"] == 2 and ep.stats["messages_dropped"] == 2


def test_bad_ack_is_never_answered() -> None:
    ep = new_endpoint()
    ep.receive(msg("ACK").replace(b"Max-Forwards: 70", b"Max-Forwards: 300"), PEER, "udp", 0)
    assert ep.datagrams_to_send() == []


# -- Via received / rport (§18.2.1, RFC 3581) --------------------------------------------------


def test_rport_sends_response_to_the_source_port() -> None:
    ep = new_endpoint()
    ev = incoming(ep, msg(via_host="10.0.0.5:5060", rport=True))
    via = ev.request.vias[0]
    assert via.params["received"] == "203.0.113.5" and via.params["rport"] == "5062"
    (trying, addr, _), = sent(ep)
    assert addr == PEER
    assert isinstance(trying, Response)
    assert trying.vias[0].params["rport"] == "5062"


def test_received_without_rport_uses_the_sent_by_port() -> None:
    ep = new_endpoint()
    ev = incoming(ep, msg(via_host="10.0.0.5:5070"))
    assert ev.request.vias[0].params["received"] == "203.0.113.5"
    assert "rport" not in ev.request.vias[0].params
    (_, addr, _), = sent(ep)
    assert addr == ("203.0.113.5", 5070)


def test_matching_sent_by_adds_nothing() -> None:
    ep = new_endpoint()
    ev = incoming(ep)
    assert "received" not in ev.request.vias[0].params


def test_tcp_responses_go_back_on_the_connection() -> None:
    ep = new_endpoint()
    incoming(ep, msg(transport="TCP", via_host="10.0.0.5:5060"), transport="tcp")
    (_, addr, transport), = sent(ep)
    assert (addr, transport) == (PEER, "tcp")


def test_ipv6_source() -> None:
    ep = new_endpoint()
    src: Addr = ("2001:db8::5", 5062)
    ep.receive(msg(via_host="[2001:db8::5]:5062", rport=True), src, "udp", 0.0)
    ev = drain(ep)[0]
    assert isinstance(ev, RequestReceived)
    assert "received" in ev.request.vias[0].params
    (_, addr, _), = sent(ep)
    assert addr == src


# -- RFC 2543 matching (§17.2.3 last paragraph; RFC 4475 §3.2.1) -----------------------------


def test_badbranch_options_uses_rfc2543_matching() -> None:
    data = (SHARED / "conformance" / "rfc4475" / "badbranch.dat").read_bytes()
    src: Addr = ("192.0.2.1", 5060)
    ep = new_endpoint()
    ep.receive(data, src, "udp", 0.0)
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    key = events[0].tx_key
    assert key.branch == "" and "badbranch.sadonfo23i420jv0as0derf3j3n" in key.legacy
    ep.receive(data, src, "udp", 0.3)  # a retransmission matches by the RFC 2543 fields
    assert drain(ep) == []
    assert ep.send_response(key, make_response(events[0].request, 200, to_tag="x"), 0.4)
    ep.receive(data, src, "udp", 0.5)
    assert statuses(ep) == [200, 200]
    # A different CSeq with the same bare-cookie branch is a new transaction.
    ep.receive(data.replace(b"CSeq: 8", b"CSeq: 9"), src, "udp", 0.6)
    assert isinstance(drain(ep)[0], RequestReceived)


def rfc2543_invite(method: str = "INVITE", to_tag: str = "") -> bytes:
    to = "sip:bob@192.0.2.10" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:bob@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.5:5062\r\n"
            f"From: sip:alice@example.org;tag=old1\r\nTo: {to}\r\nCall-ID: legacy-1\r\n"
            f"CSeq: 5 {method}\r\nContent-Length: 0\r\n\r\n").encode()


def test_rfc2543_invite_non2xx_ack_matches_by_to_tag() -> None:
    ep = new_endpoint()
    ev = incoming(ep, rfc2543_invite())
    assert ev.tx_key.legacy
    ep.receive(rfc2543_invite(), PEER, "udp", 0.1)
    assert drain(ep) == []
    ep.send_response(ev.tx_key, make_response(ev.request, 486, to_tag="mine"), 0.2)
    ep.datagrams_to_send()
    ep.receive(rfc2543_invite("ACK", to_tag="wrong"), PEER, "udp", 0.3)
    assert [type(e) for e in drain(ep)] == [AckReceived]  # not ours: left to the TU
    ep.receive(rfc2543_invite("ACK", to_tag="mine"), PEER, "udp", 0.4)
    assert drain(ep) == [] and ep.stats["acks_absorbed"] == 1
    ep.receive(rfc2543_invite("CANCEL"), PEER, "udp", 0.5)
    assert statuses(ep) == [200]  # matched the INVITE by the RFC 2543 fields
    run_timers(ep, 100.0)
    assert len(ep.transactions) == 0


def test_rfc2543_cancel_of_pending_invite() -> None:
    ep = new_endpoint()
    ev = incoming(ep, rfc2543_invite())
    ep.datagrams_to_send()
    ep.receive(rfc2543_invite("CANCEL"), PEER, "udp", 0.5)
    assert statuses(ep) == [200]
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], CancelReceived)
    assert events[0].invite_tx_key == ev.tx_key


# -- client transactions -----------------------------------------------------------------------


def out_request(method: str = "BYE", cseq: int = 2) -> Request:
    headers = Headers([
        ("From", "<sip:proj@192.0.2.10>;tag=uas1"),
        ("To", "<sip:alice@example.org>;tag=from1"),
        ("Call-ID", "call-1"),
        ("CSeq", f"{cseq} {method}"),
    ])
    return Request(method, parse_uri("sip:alice@203.0.113.5:5062"), headers)


def answer(req: Request, status: int) -> bytes:
    return make_response(req, status, to_tag="from1").to_bytes()


def test_send_request_adds_via_and_matches_response() -> None:
    ep = new_endpoint()
    req = out_request()
    key = ep.send_request(req, PEER, "udp", 0.0)
    (wire, addr, transport), = sent(ep)
    assert isinstance(wire, Request) and (addr, transport) == (PEER, "udp")
    via = wire.vias[0]
    assert (via.host, via.port, via.transport) == ("192.0.2.10", 5060, "UDP")
    assert via.branch == key.branch and key.branch.startswith("z9hG4bK")
    assert "rport" in via.params and wire.max_forwards == 70
    ep.receive(answer(wire, 200), PEER, "udp", 0.1)
    events = drain(ep)
    assert isinstance(events[0], ResponseReceived) and events[0].tx_key == key
    assert events[0].response.status == 200
    ep.receive(answer(wire, 200), PEER, "udp", 0.2)  # retransmission absorbed (Completed)
    assert drain(ep) == []
    run_timers(ep, 10.0)
    assert drain(ep) == [TransactionTerminated(key)]
    assert len(ep.transactions) == 0


def test_request_timeout_timer_f() -> None:
    ep = new_endpoint()
    key = ep.send_request(out_request(), PEER, "udp", 0.0)
    run_timers(ep, 100.0)
    events = drain(ep)
    assert events == [TransactionTimeout(key, "BYE", "F"), TransactionTerminated(key)]
    assert len(ep.datagrams_to_send()) == 11


def test_reinvite_2xx_retransmissions_reach_tu_for_ack() -> None:
    ep = new_endpoint()
    key = ep.send_request(out_request("INVITE"), PEER, "udp", 0.0)
    (wire, _, _), = sent(ep)
    assert isinstance(wire, Request)
    ep.receive(answer(wire, 200), PEER, "udp", 0.1)
    ep.receive(answer(wire, 200), PEER, "udp", 0.9)
    assert [type(e) for e in drain(ep)] == [ResponseReceived, ResponseReceived]
    ack = out_request("ACK", cseq=2)
    ep.send_ack(ack, PEER, "udp", 1.0)
    (wire_ack, _, _), = sent(ep)
    assert isinstance(wire_ack, Request) and wire_ack.vias[0].branch != key.branch
    run_timers(ep, 100.0)
    assert len(ep.transactions) == 0


def test_cancel_of_our_invite_is_its_own_transaction() -> None:
    ep = new_endpoint()
    invite = out_request("INVITE")
    invite_key = ep.send_request(invite, PEER, "udp", 0.0)
    ep.receive(answer(invite, 180), PEER, "udp", 0.1)
    cancel = build_cancel(invite)
    cancel_key = ep.send_request(cancel, PEER, "udp", 0.2)
    assert cancel_key.branch == invite_key.branch and cancel_key != invite_key
    wire = [m for m, _, _ in sent(ep)]
    assert isinstance(wire[-1], Request) and wire[-1].method == "CANCEL"
    assert str(wire[-1].cseq) == "2 CANCEL" and wire[-1].uri == invite.uri
    ep.receive(answer(cancel, 200), PEER, "udp", 0.3)
    ep.receive(answer(invite, 487), PEER, "udp", 0.4)
    events = [e for e in drain(ep) if isinstance(e, ResponseReceived)]
    assert [(e.tx_key, e.response.status) for e in events] == [
        (invite_key, 180), (cancel_key, 200), (invite_key, 487)]
    ack = [m for m, _, _ in sent(ep)]
    assert isinstance(ack[0], Request) and ack[0].method == "ACK"  # §17.1.1.3, by the tx
    run_timers(ep, 100.0)
    assert len(ep.transactions) == 0


def test_stray_and_multi_via_responses_are_dropped() -> None:
    ep = new_endpoint()
    req = out_request()
    ep.send_request(req, PEER, "udp", 0.0)
    (wire, _, _), = sent(ep)
    assert isinstance(wire, Request)
    stray = make_response(wire, 200)
    stray.headers.set("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKother")
    ep.receive(stray.to_bytes(), PEER, "udp", 0.1)
    two = make_response(wire, 200)
    two.headers.add("Via", "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKz")
    ep.receive(two.to_bytes(), PEER, "udp", 0.2)
    events = drain(ep)
    assert [type(e) for e in events] == [MessageDropped, MessageDropped]
    assert ep.stats["stray_responses"] == 1


def test_send_request_rejects_ack_and_missing_sent_by() -> None:
    ep = SipEndpoint()
    with pytest.raises(ValueError):
        ep.send_request(out_request(), PEER, "udp", 0.0)
    with pytest.raises(ValueError):
        new_endpoint().send_request(out_request("ACK"), PEER, "udp", 0.0)


def test_transport_error_fails_transactions_to_that_peer() -> None:
    ep = new_endpoint()
    key = ep.send_request(out_request(), PEER, "tcp", 0.0)
    other = ep.send_request(out_request(), ("198.51.100.1", 5060), "tcp", 0.0)
    ep.transport_error(PEER, "tcp", 0.1)
    assert drain(ep) == [TransactionTimeout(key, "BYE", "transport"), TransactionTerminated(key)]
    assert list(ep.transactions) == [other]


# -- limits and leaks --------------------------------------------------------------------------


def test_table_limit_answers_503() -> None:
    ep = new_endpoint(max_transactions=1)
    incoming(ep)
    ep.datagrams_to_send()
    ep.receive(msg(branch="z9hG4bKc2", call_id="call-2"), PEER, "udp", 0.0)
    assert statuses(ep) == [503]
    assert ep.stats["transactions_rejected"] == 1 and len(ep.transactions) == 1


def test_many_calls_leave_nothing_behind() -> None:
    ep = new_endpoint(timers=TimerConfig(t1=0.5))
    for i in range(200):
        now = i * 0.01
        ev = incoming(ep, msg(branch=f"z9hG4bKn{i}", call_id=f"c{i}"), now)
        if i % 3 == 0:
            ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="t"), now)
            ep.receive(msg("ACK", branch=f"z9hG4bKa{i}", call_id=f"c{i}", to_tag="t"),
                       PEER, "udp", now)
        elif i % 3 == 1:
            ep.send_response(ev.tx_key, make_response(ev.request, 486, to_tag="t"), now)
            ep.receive(msg("ACK", branch=f"z9hG4bKn{i}", call_id=f"c{i}", to_tag="t"),
                       PEER, "udp", now)
        else:
            ep.receive(msg("CANCEL", branch=f"z9hG4bKn{i}", call_id=f"c{i}"), PEER, "udp", now)
            ep.send_response(ev.tx_key, make_response(ev.request, 487, to_tag="t"), now)
            ep.receive(msg("ACK", branch=f"z9hG4bKn{i}", call_id=f"c{i}", to_tag="t"),
                       PEER, "udp", now)
        drain(ep)
    assert len(ep.transactions) > 0
    run_timers(ep, 1000.0)
    assert len(ep.transactions) == 0 and not ep.pending_acks
    assert ep.get_timer() is None
    assert len(ep._heap) == 0


def test_get_timer_is_the_earliest_deadline() -> None:
    ep = new_endpoint()
    assert ep.get_timer() is None
    ep.send_request(out_request(), PEER, "udp", 10.0)
    assert ep.get_timer() == 10.5
    ep.send_request(out_request(), PEER, "tcp", 5.0)
    assert ep.get_timer() == 10.5  # TCP: only Timer F at 37
    ep.handle_timer(10.5)
    assert ep.get_timer() == 11.5


def test_rfc4475_torture_messages_never_crash_or_leak() -> None:
    ep = new_endpoint()
    folder = SHARED / "conformance" / "rfc4475"
    files = sorted(folder.glob("*.dat"))
    assert len(files) == 49
    for i, path in enumerate(files):
        ep.receive(path.read_bytes(), PEER, "udp", i * 0.01)
        for event in drain(ep):
            if isinstance(event, RequestReceived):
                final = make_response(event.request, 405, to_tag="t")
                assert ep.send_response(event.tx_key, final, i * 0.01)
    # Error responses echo the bad headers (§8.2.6), so read only their status lines.
    answered = {int(data.split(b" ", 2)[1]) for data, _, _ in ep.datagrams_to_send()}
    assert {400, 505, 405} <= answered
    assert ep.stats["parse_errors"] > 10
    run_timers(ep, 1000.0)
    assert len(ep.transactions) == 0 and not ep.pending_acks


def test_invite_retransmitted_after_the_2xx_opens_no_second_call() -> None:
    # RFC 6026 §7.1: in Accepted, a retransmitted INVITE is absorbed (the TU's 2xx
    # retransmissions answer it); it must never surface as a new request.
    ep = new_endpoint()
    ev = incoming(ep)
    ep.datagrams_to_send()
    assert ep.send_response(ev.tx_key, make_response(ev.request, 200, to_tag="uas1"), 0.1)
    ep.datagrams_to_send()
    for at in (0.6, 1.1, 2.5, 20.0, 31.0):
        ep.receive(msg(), PEER, "udp", at)
        ep.handle_timer(at)
        assert not [e for e in drain(ep) if type(e).__name__ == "RequestReceived"], at


# -- per-source admission ----------------------------------------------------------------------


def test_invites_over_a_sources_rate_get_503_with_retry_after() -> None:
    from callgate.sip.limits import RequestLimits

    ep = new_endpoint(limits=RequestLimits(invite_rate=0.5, invite_burst=2))
    for n in range(2):
        incoming(ep, msg(branch=f"z9hG4bKr{n}", call_id=f"r{n}"), now=0.0)
        assert statuses(ep) == [100]
    ep.receive(msg(branch="z9hG4bKr0", call_id="r0"), PEER, "udp", 0.1)  # a retransmission
    assert drain(ep) == [] and statuses(ep) == [100]                    # costs no token
    ep.receive(msg(branch="z9hG4bKr2", call_id="r2"), PEER, "udp", 0.1)
    assert drain(ep) == []
    (response, addr, _), = sent(ep)
    assert isinstance(response, Response) and addr == PEER
    assert response.status == 503 and response.headers.get("Retry-After") == "2"
    # In-dialog requests are the calls already let in; another source has its own bucket.
    incoming(ep, msg("BYE", branch="z9hG4bKr3", call_id="r0", to_tag="t1"), now=0.2)
    ep.receive(msg(branch="z9hG4bKr4", call_id="r4"), ("198.51.100.1", 5060), "udp", 0.2)
    assert isinstance(drain(ep)[0], RequestReceived)
    incoming(ep, msg(branch="z9hG4bKr5", call_id="r5"), now=2.2)  # a token is back
    assert ep.stats["rate_limited"] == 1


def test_probes_over_a_sources_rate_are_dropped_without_a_word() -> None:
    from callgate.sip.limits import RequestLimits

    ep = new_endpoint(limits=RequestLimits(probe_rate=1, probe_burst=3))
    for n in range(10):
        ep.receive(msg("OPTIONS", branch=f"z9hG4bKp{n}", call_id=f"p{n}"), PEER, "udp", 0.0)
    assert sum(isinstance(e, RequestReceived) for e in drain(ep)) == 3
    assert sent(ep) == [] and ep.stats["rate_limited"] == 7


def test_an_overloaded_endpoint_turns_new_invites_away() -> None:
    ep = new_endpoint()
    ep.overloaded = "file descriptors running out"
    ep.receive(msg(), PEER, "udp", 0.0)
    assert drain(ep) == []
    (response, _, _), = sent(ep)
    assert isinstance(response, Response) and response.status == 503
    assert response.headers.get("Retry-After") == "10"
    incoming(ep, msg("OPTIONS", branch="z9hG4bKo1"), now=0.0)  # only INVITEs cost sockets
