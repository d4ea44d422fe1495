"""Trunks on a fake clock: REGISTER with digest, refresh, back-off, NAT, and who may call in."""

from __future__ import annotations

from typing import Any

from callgate.calls import actions as act
from callgate.calls.core import CallCore
from callgate.calls.trunking import REALM
from callgate.config import Trunk
from callgate.sip import events as ev
from callgate.sip.digest import authorization, parse_challenge, parse_params
from callgate.sip.message import make_response
from tests.calls.core_harness import PEER, Peer, core, of, only, sdp_answer, statuses

REGISTRAR = "198.51.100.20"


def registering(**fields: Any) -> tuple[CallCore, Peer]:
    trunk = Trunk.model_validate({"address": f"sip:{REGISTRAR}:5060", "username": "2001",
                                  "password": "pw", "register": True, "expires": 600,
                                  "keepalive": 0, **fields})
    gate = core(trunks={"pbx": trunk})
    gate.start_trunks(1000.0)
    return gate, Peer(gate)


def answer(gate: CallCore, sent: act.SendRequest, status: int, *, at: float,
           headers: list[tuple[str, str]] | None = None, via: str | None = None) -> None:
    response = make_response(sent.request, status, to_tag="reg1", headers=headers or [])
    if via is not None:
        response.headers.set("Via", via)
    gate.handle_sip(ev.ResponseReceived(response, sent.tx_key), at)


def test_register_answers_401_then_refreshes_before_expiry() -> None:
    gate, peer = registering()
    first = only(peer.advance(0), act.SendRequest)
    assert first.request.method == "REGISTER" and first.addr == (REGISTRAR, 5060)
    assert first.request.headers.get("Expires") == "600"
    answer(gate, first, 401, at=peer.now, headers=[
        ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", algorithm=SHA-256, qop="auth"')])
    second = only(peer.drain(), act.SendRequest)
    assert second.request.cseq.seq == first.request.cseq.seq + 1
    _, params = parse_params(second.request.headers.get("Authorization") or "")
    assert params["username"] == "2001" and params["algorithm"] == "SHA-256"
    assert params["nonce"] == "n1" and params["uri"] == f"sip:{REGISTRAR}:5060"

    contact = second.request.headers.get("Contact") or ""
    answer(gate, second, 200, at=peer.now, headers=[("Contact", f"{contact};expires=300")])
    assert gate.registrations["pbx"].state == "registered"
    assert not peer.advance(269)  # refresh at 90% of what the registrar granted
    refresh = only(peer.advance(1), act.SendRequest)
    assert refresh.request.method == "REGISTER"
    assert refresh.request.headers.get("Call-ID") == first.request.headers.get("Call-ID")


def test_407_is_answered_with_proxy_authorization() -> None:
    gate, peer = registering()
    first = only(peer.advance(0), act.SendRequest)
    answer(gate, first, 407, at=peer.now, headers=[
        ("Proxy-Authenticate", 'Digest realm="pbx", nonce="n7"')])
    retried = only(peer.drain(), act.SendRequest)
    assert "Proxy-Authorization" in retried.request.headers
    assert "Authorization" not in retried.request.headers


def test_wrong_password_backs_off_exponentially() -> None:
    gate, peer = registering()
    challenge = [("WWW-Authenticate", 'Digest realm="pbx", nonce="n1"')]
    waits = []
    for _ in range(3):
        sent = only(peer.advance(1000), act.SendRequest)
        answer(gate, sent, 401, at=peer.now, headers=challenge)
        retry = of(peer.drain(), act.SendRequest)
        if retry:  # a fresh nonce is tried once; the same nonce again means "wrong password"
            answer(gate, retry[0], 401, at=peer.now, headers=challenge)
            assert not peer.drain()
        reg = gate.registrations["pbx"]
        assert reg.state == "failed" and reg.due is not None
        waits.append(reg.due - peer.now)
    assert waits == [5.0, 10.0, 20.0]


def test_503_retry_after_and_timeouts_are_failures() -> None:
    gate, peer = registering()
    sent = only(peer.advance(0), act.SendRequest)
    answer(gate, sent, 503, at=peer.now, headers=[("Retry-After", "60")])
    assert gate.registrations["pbx"].due == peer.now + 60
    assert not peer.advance(59)
    again = only(peer.advance(1), act.SendRequest)
    gate.handle_sip(ev.TransactionTimeout(again.tx_key, "REGISTER", "F"), peer.now)
    assert gate.registrations["pbx"].due == peer.now + 10.0


def test_a_new_public_address_is_registered_at_once() -> None:
    gate, peer = registering()
    sent = only(peer.advance(0), act.SendRequest)
    via = sent.request.headers.get("Via") or ""
    answer(gate, sent, 200, at=peer.now, via=f"{via};received=192.0.2.99;rport=40001"
           .replace(";rport;", ";"))
    again = only(peer.drain(), act.SendRequest)
    assert "@192.0.2.99:40001>" in (again.request.headers.get("Contact") or "")


def _trunked(**fields: Any) -> CallCore:
    trunk = Trunk.model_validate({"address": "sip:203.0.113.1", **fields})
    return core(trunks={"carrier": trunk})


def test_calls_from_an_allowed_network_are_admitted_others_get_403() -> None:
    allowed = Peer(_trunked(inbound_cidrs=["203.0.113.0/24"]))
    allowed.send("INVITE", body=sdp_answer())
    assert only(allowed.drain(), act.OfferCall)

    stranger = Peer(_trunked(inbound_cidrs=["10.0.0.0/8"]))
    stranger.send("INVITE", body=sdp_answer())
    refused = stranger.drain()
    assert statuses(refused) == [403] and not of(refused, act.OfferCall)
    assert not stranger.core.calls


def test_digest_challenge_admits_the_trunk_that_knows_the_password() -> None:
    gate = _trunked(username="carrier", password="s3cret", inbound_challenge=True)
    peer = Peer(gate)
    peer.send("INVITE", body=sdp_answer())
    challenged = only(peer.drain(), act.SendResponse).response
    assert challenged.status == 401
    challenge = parse_challenge(challenged.headers.get("WWW-Authenticate") or "")
    assert challenge.realm == REALM
    credential = authorization(challenge, method="INVITE", uri="sip:proj_x@192.0.2.10",
                               username="carrier", password="s3cret")
    peer.send("INVITE", body=sdp_answer(), cseq=2, extra=f"Authorization: {credential}\r\n")
    assert only(peer.drain(), act.OfferCall)

    wrong = authorization(challenge, method="INVITE", uri="sip:proj_x@192.0.2.10",
                          username="carrier", password="guess")
    peer.send("INVITE", body=sdp_answer(), cseq=3, extra=f"Authorization: {wrong}\r\n")
    assert statuses(peer.drain()) == [401]


def test_a_call_over_the_registration_binding_is_the_trunks() -> None:
    gate, peer = registering()
    user = gate.registrations["pbx"].contact_user
    request = peer.request("INVITE", body=sdp_answer())
    request.uri.user = user  # type: ignore[union-attr]
    gate.handle_sip(ev.RequestReceived(request, ev.TxKey(True, "INVITE", "b"), PEER, "udp"),
                    peer.now)
    offered = only(peer.drain(), act.OfferCall)
    assert gate.calls[offered.call_id].extra["trunk"] == "pbx"


def test_a_trunks_call_may_name_its_number_rather_than_the_project() -> None:
    gate = _trunked(inbound_cidrs=["203.0.113.0/24"])
    peer = Peer(gate)
    request = peer.request("INVITE", body=sdp_answer())
    request.uri.user = "+14155550100"  # type: ignore[union-attr]
    gate.handle_sip(ev.RequestReceived(request, ev.TxKey(True, "INVITE", "d"), PEER, "udp"),
                    peer.now)
    assert only(peer.drain(), act.OfferCall)
    # Without trunks the project id is still the only name that rings.
    open_gate = core()
    stranger = Peer(open_gate)
    request = stranger.request("INVITE", body=sdp_answer())
    request.uri.user = "+14155550100"  # type: ignore[union-attr]
    open_gate.handle_sip(ev.RequestReceived(request, ev.TxKey(True, "INVITE", "e"), PEER,
                                            "udp"), stranger.now)
    assert statuses(stranger.drain()) == [404]


def test_keepalives_keep_the_binding_and_notice_a_new_public_address() -> None:
    gate, peer = registering(keepalive=30)
    sent = only(peer.advance(0), act.SendRequest)
    answer(gate, sent, 200, at=peer.now)
    assert gate.registrations["pbx"].state == "registered"
    options = only(peer.advance(30), act.SendRequest)
    assert options.request.method == "OPTIONS" and options.addr == (REGISTRAR, 5060)
    via = options.request.headers.get("Via") or ""
    answer(gate, options, 404, at=peer.now,  # any answer will do: it carries received/rport
           via=f"{via};received=192.0.2.77;rport=41000".replace(";rport;", ";"))
    moved = only(peer.drain(), act.SendRequest)
    assert moved.request.method == "REGISTER"
    assert "@192.0.2.77:41000>" in (moved.request.headers.get("Contact") or "")


def test_keepalive_on_tcp_is_a_crlf() -> None:
    gate, peer = registering(keepalive=30, address=f"sip:{REGISTRAR}:5060;transport=tcp")
    sent = only(peer.advance(0), act.SendRequest)
    assert sent.transport == "tcp"
    answer(gate, sent, 200, at=peer.now)
    assert only(peer.advance(30), act.SendKeepalive).addr == (REGISTRAR, 5060)
