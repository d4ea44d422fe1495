"""Calls we place, on a fake clock: ringing, answer, 407, 3xx, CANCEL races, limits."""

from __future__ import annotations

from typing import Any

import pytest

from callgate.calls import actions as act
from callgate.calls import progress
from callgate.calls.control import InvalidCallRequest
from callgate.calls.core import CallCore
from callgate.calls.dialplan import DialPlan, plan_call
from callgate.calls.outbound import TooManyCalls
from callgate.calls.state import CallState
from callgate.config import Trunk
from callgate.sip import events as ev
from callgate.sip.message import make_response
from tests.calls.core_harness import core, of, only, sdp_answer, settings

TRUNK = {"address": "sip:198.51.100.7:5060", "username": "acme", "password": "pw",
         "caller_number": "+14155550100"}
CALLEE = "<sip:bob@198.51.100.7:5060>"


def gate(**overrides: Any) -> CallCore:
    return core(trunks={"acme": Trunk.model_validate({**TRUNK, **overrides})})


def plan(gate_: CallCore, destination: str = "+14155550123", **transport: Any) -> DialPlan:
    return plan_call({"type": "sip", "destination": destination, "trunk": "acme",
                      **transport}, gate_.settings)


def drain(gate_: CallCore) -> list[act.Action]:
    out = []
    while (action := gate_.next_action()) is not None:
        out.append(action)
    return out


def reply(gate_: CallCore, sent: act.SendRequest, status: int, now: float = 0.0, *,
          body: str = "", headers: list[tuple[str, str]] | None = None) -> list[act.Action]:
    headers = headers or []
    if not any(name == "Contact" for name, _ in headers):
        headers = [("Contact", CALLEE), *headers]
    response = make_response(sent.request, status, to_tag="callee1" if status > 100 else None,
                             body=body.encode(), headers=headers,
                             content_type="application/sdp" if body else None)
    gate_.handle_sip(ev.ResponseReceived(response, sent.tx_key), now)
    return drain(gate_)


def dialled(gate_: CallCore, **transport: Any) -> tuple[str, act.SendRequest]:
    call = gate_.dial(plan(gate_, **transport), {"type": "realtime"}, 30000, 0.0)
    return call.id, only(drain(gate_), act.SendRequest)


def test_outbound_happy_path() -> None:
    g = gate()
    call_id, invite = dialled(g)
    request = invite.request
    assert invite.addr == ("198.51.100.7", 5060) and invite.transport == "udp"
    assert str(request.uri) == "sip:+14155550123@198.51.100.7;user=phone"
    assert (request.headers.get("From") or "").startswith("<sip:+14155550100@198.51.100.7>")
    assert b"m=audio 30000 RTP/AVP" in request.body

    ringing = reply(g, invite, 180)
    assert only(ringing, act.Notify).event["type"] == progress.RINGING
    assert g.calls[call_id].state is CallState.RINGING and len(g.dialogs) == 1
    assert not of(ringing, act.ConfigureMedia)  # no early media unless asked for

    answered = reply(g, invite, 200, body=sdp_answer())
    assert [a.request.method for a in of(answered, act.SendAck)] == ["ACK"]
    assert only(answered, act.ConfigureMedia).negotiated.remote_addr == ("203.0.113.5", 40000)
    only(answered, act.StartSession)
    assert only(answered, act.Notify).event["type"] == progress.ANSWERED
    assert g.calls[call_id].state is CallState.ACTIVE
    # A retransmitted 2xx (our ACK was lost) is ACKed again, nothing else.
    assert [type(a) for a in reply(g, invite, 200, body=sdp_answer())] == [act.SendAck]

    g.hangup(call_id, 5.0)
    hung = drain(g)
    assert [a.request.method for a in of(hung, act.SendRequest)] == ["BYE"]
    ended = only(hung, act.Notify).event
    assert ended["type"] == progress.ENDED and ended["data"]["call_id"] == call_id


def test_407_is_answered_once_and_a_second_one_fails_the_call() -> None:
    g = gate()
    _, invite = dialled(g)
    challenge = [("Proxy-Authenticate", 'Digest realm="acme", nonce="n1", qop="auth"')]
    again = only(reply(g, invite, 407, headers=challenge), act.SendRequest)
    assert again.request.cseq.seq == 2 and "Proxy-Authorization" in again.request.headers
    assert again.request.call_id == invite.request.call_id
    failed = reply(g, again, 407, headers=challenge)
    event = only(failed, act.Notify).event
    assert event["type"] == progress.FAILED and event["data"]["sip_status"] == 407
    assert only(failed, act.Release).state is CallState.FAILED and not g.calls


def test_3xx_is_followed_through_the_trunk_a_bounded_number_of_times() -> None:
    g = gate()
    g.settings.max_redirects = 1
    _, invite = dialled(g)
    moved = only(reply(g, invite, 302, headers=[("Contact", "<sip:carol@192.0.2.50>")]),
                 act.SendRequest)
    assert str(moved.request.uri) == "sip:carol@192.0.2.50"
    assert moved.addr == invite.addr  # still the trunk, not the host the 3xx named
    failed = reply(g, moved, 302, headers=[("Contact", "<sip:dave@192.0.2.51>")])
    assert only(failed, act.Notify).event["data"]["sip_status"] == 302


def test_busy_is_reported_with_its_status() -> None:
    g = gate()
    _, invite = dialled(g)
    event = only(reply(g, invite, 486), act.Notify).event
    assert event["type"] == progress.FAILED
    assert event["data"]["sip_status"] == 486 and "486" in event["data"]["reason"]


def test_hangup_while_ringing_cancels_and_a_crossing_200_is_acked_and_byed() -> None:
    g = gate()
    call_id, invite = dialled(g)
    reply(g, invite, 180)
    g.hangup(call_id, 1.0)
    actions = drain(g)
    cancel = only(actions, act.SendRequest)
    assert cancel.request.method == "CANCEL"
    assert cancel.request.headers.get("Via") == invite.request.headers.get("Via")
    assert only(actions, act.Release).state is CallState.CANCELLED
    crossed = reply(g, invite, 200, body=sdp_answer())
    assert [a.request.method for a in of(crossed, act.SendAck)] == ["ACK"]
    assert [a.request.method for a in of(crossed, act.SendRequest)] == ["BYE"]


def test_no_answer_within_the_ring_timeout() -> None:
    g = gate()
    _, invite = dialled(g, ring_timeout=20)
    reply(g, invite, 180)
    g.handle_timer(19.9)
    assert not drain(g)
    g.handle_timer(20.0)
    actions = drain(g)
    assert only(actions, act.SendRequest).request.method == "CANCEL"
    assert only(actions, act.Notify).event["data"]["sip_status"] == 408
    assert only(actions, act.Release).state is CallState.TIMED_OUT


def test_early_media_when_asked_for() -> None:
    g = gate()
    _, invite = dialled(g, early_media=True)
    early = reply(g, invite, 183, body=sdp_answer())
    only(early, act.ConfigureMedia)
    assert not of(early, act.StartSession)  # the session starts at the answer


def test_concurrent_outbound_limits() -> None:
    g = gate(max_outbound=1)
    dialled(g)
    with pytest.raises(TooManyCalls):
        g.dial(plan(g), {}, 30002, 0.0)
    wide = core(max_outbound_calls=1, trunks={"acme": Trunk.model_validate(TRUNK)})
    dialled(wide)
    with pytest.raises(TooManyCalls):
        wide.check_dial(plan(wide))


@pytest.mark.parametrize(("transport", "param"), [
    ({"destination": "bob"}, "transport.destination"),
    ({"destination": "+1415555\r\nX: y"}, "transport"),
    ({"destination": "+14155550123", "trunk": "nope"}, "transport.trunk"),
    ({"destination": "+14155550123", "headers": {"X-Ok": "a\nb"}}, "transport.X-Ok"),
    ({"destination": "+14155550123", "headers": {"Via": "x"}}, "transport.headers.Via"),
    ({"destination": "+14155550123", "trunk": {"provider_url": "http://x"}},
     "transport.trunk.provider_url"),
])
def test_bad_destinations_are_clear_400s(transport: dict[str, Any], param: str) -> None:
    s = settings(trunks={"acme": Trunk.model_validate(TRUNK)})
    with pytest.raises(InvalidCallRequest) as info:
        plan_call({"type": "sip", "trunk": "acme", **transport}, s)
    assert info.value.param is not None and info.value.param.startswith(param.split(".X")[0])


def test_inline_trunk_and_sip_destination() -> None:
    s = settings()
    p = plan_call({"type": "sip", "destination": "sip:bob@pbx.example.com",
                   "trunk": {"provider_url": "sip:192.0.2.9:5080;transport=tcp",
                             "auth": {"type": "digest", "username": "u", "password": "p"},
                             "caller_number": "+15550001111"}}, s)
    assert (p.target.host, p.target.port, p.target.transport) == ("192.0.2.9", 5080, "tcp")
    assert p.request_uri == "sip:bob@pbx.example.com" and p.trunk is None
    assert (p.username, p.password) == ("u", "p")
    assert p.caller == "sip:+15550001111@192.0.2.9"
    assert plan_call({"type": "sip", "destination": "tel:+15551234567", "trunk": "x"},
                     settings(trunks={"x": Trunk.model_validate(TRUNK)})).request_uri == \
        "sip:+15551234567@198.51.100.7;user=phone"
