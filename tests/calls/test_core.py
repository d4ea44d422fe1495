"""The calls core on a fake clock: every race that used to need a real peer and real time."""

from __future__ import annotations

import pytest

from callgate.calls import actions as act
from callgate.calls.control import CallStateConflict
from callgate.calls.core import MAX_DURATION_REASON
from callgate.calls.state import CallState
from callgate.sip import events as ev
from tests.calls.core_harness import PEER, Peer, core, methods, of, only, sdp_answer, statuses


def test_inbound_happy_path() -> None:
    peer = Peer(core())
    peer.send("INVITE", body=sdp_answer())
    first = peer.drain()
    assert statuses(first) == [180]
    offered = only(first, act.OfferCall)
    assert offered.event["type"] == "realtime.call.incoming"
    assert offered.event["data"]["sip_media_security"] == "rtp"
    call_id = offered.call_id

    peer.core.accept(call_id, {"type": "realtime"}, peer.now)
    assert peer.core.calls[call_id].state is CallState.ANSWERING
    assert peer.core.answer(call_id, 30000, peer.now)
    answered = peer.drain()
    assert statuses(answered) == [200]
    assert b"m=audio 30000 RTP/AVP 0" in only(answered, act.SendResponse).response.body
    only(answered, act.StartSession)
    # No media goes out before the ACK confirms the answer.
    assert not of(answered, act.ConfigureMedia)

    peer.to = only(answered, act.SendResponse).response.headers.get("To") or ""
    peer.send("ACK")
    confirmed = peer.drain()
    assert only(confirmed, act.ConfigureMedia).negotiated.remote_addr == ("203.0.113.5", 40000)
    assert peer.core.calls[call_id].state is CallState.ACTIVE

    peer.send("BYE", cseq=2)
    bye = peer.drain()
    assert statuses(bye) == [200]
    assert only(bye, act.Release).state is CallState.ENDED
    assert not peer.core.calls and not len(peer.core.dialogs)
    # The verbs stay idempotent about a call that is over.
    peer.core.hangup(call_id, peer.now)
    with pytest.raises(CallStateConflict):
        peer.core.accept(call_id, {"type": "realtime"}, peer.now)


def test_cancel_while_media_is_set_up_wins_and_the_answer_is_dropped() -> None:
    peer = Peer(core())
    invite = peer.send("INVITE", body=sdp_answer())
    call_id = only(peer.drain(), act.OfferCall).call_id
    peer.core.accept(call_id, {"type": "realtime"}, peer.now)
    peer.core.handle_sip(ev.CancelReceived(peer.request("CANCEL"), invite), peer.now)
    cancelled = peer.drain()
    assert statuses(cancelled) == [487]
    assert only(cancelled, act.Release).state is CallState.CANCELLED
    assert not peer.core.answer(call_id, 30000, peer.now)
    assert not peer.drain()


def test_cancel_against_the_200_has_no_effect() -> None:
    """RFC 3261 §9.2: the CANCEL crossed our 2xx; the endpoint answered it 200 and the call
    stays up (the caller must BYE)."""
    peer = Peer(core())
    invite = peer.send("INVITE", body=sdp_answer())
    call_id = only(peer.drain(), act.OfferCall).call_id
    peer.core.accept(call_id, {"type": "realtime"}, peer.now)
    assert peer.core.answer(call_id, 30000, peer.now)
    peer.drain()
    peer.core.handle_sip(ev.CancelReceived(peer.request("CANCEL"), invite), peer.now)
    assert not peer.drain()
    assert peer.core.calls[call_id].state is CallState.ACCEPTED


def test_nobody_accepts_in_time() -> None:
    peer = Peer(core(accept_timeout=10))
    peer.send("INVITE", body=sdp_answer())
    peer.drain()
    assert not peer.advance(9.9)
    timed_out = peer.advance(0.2)
    assert statuses(timed_out) == [480]
    assert only(timed_out, act.Release).state is CallState.TIMED_OUT


def test_late_offer_answer_arrives_in_the_ack() -> None:
    peer = Peer(core())
    peer.send("INVITE")
    call_id = only(peer.drain(), act.OfferCall).call_id
    peer.core.accept(call_id, {"type": "realtime"}, peer.now)
    peer.core.answer(call_id, 30000, peer.now)
    ok = only(peer.drain(), act.SendResponse).response
    assert b"m=audio 30000 RTP/AVP" in ok.body  # our offer
    peer.to = ok.headers.get("To") or ""
    peer.send("ACK", body=sdp_answer())
    media = only(peer.drain(), act.ConfigureMedia)
    assert media.negotiated.codec.name == "PCMU"


def test_late_offer_with_no_usable_answer_is_ended_with_bye() -> None:
    peer = Peer(core())
    peer.send("INVITE")
    call_id = only(peer.drain(), act.OfferCall).call_id
    peer.core.accept(call_id, {"type": "realtime"}, peer.now)
    peer.core.answer(call_id, 30000, peer.now)
    peer.to = only(peer.drain(), act.SendResponse).response.headers.get("To") or ""
    peer.send("ACK", body="v=0\r\n")
    ended = peer.drain()
    assert methods(ended) == ["BYE"] and not of(ended, act.ConfigureMedia)
    assert only(ended, act.Release).state is CallState.ENDED


def test_session_timer_refresh_with_update_at_half_the_interval() -> None:
    peer = Peer(core(session_expires=1800, media_timeout=0))
    call_id = peer.call_up()
    assert peer.core.calls[call_id].timer.refresher == "uas"  # type: ignore[union-attr]
    assert not peer.advance(899)
    refresh = of(peer.advance(1), act.SendRequest)
    assert [r.request.method for r in refresh] == ["UPDATE"]
    assert refresh[0].request.headers.get("Session-Expires") == "1800;refresher=uas"
    peer.answer(refresh[0], 200)
    assert not peer.drain()
    assert [r.request.method for r in of(peer.advance(900), act.SendRequest)] == ["UPDATE"]


def test_caller_refreshes_and_goes_silent_so_we_bye() -> None:
    peer = Peer(core(media_timeout=0))
    peer.call_up(extra="Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n")
    assert not peer.advance(1767)
    ended = peer.advance(1)
    assert methods(ended) == ["BYE"]


def test_glare_both_get_491_and_we_retry_within_two_seconds() -> None:
    peer = Peer(core(media_timeout=0), allow="INVITE, ACK, BYE, CANCEL")
    call_id = peer.call_up()
    ours = only(peer.advance(900), act.SendRequest)
    assert ours.request.method == "INVITE" and ours.request.body  # no UPDATE: re-INVITE

    peer.send("INVITE", body=sdp_answer(), cseq=2)
    assert statuses(peer.drain()) == [491]
    peer.answer(ours, 491)
    assert not peer.drain()
    retry_at = peer.core.calls[call_id].deadlines["glare"]
    assert peer.now <= retry_at <= peer.now + 2.0  # RFC 3261 §14.1
    again = only(peer.advance(2.0), act.SendRequest)
    assert again.request.method == "INVITE" and again.request.cseq.seq > ours.request.cseq.seq

    peer.answer(again, 200, body=sdp_answer())
    assert methods(peer.drain()) == ["ACK"]
    peer.send("INVITE", body=sdp_answer(), cseq=3)
    assert statuses(peer.drain()) == [200]


def test_in_dialog_requests_stay_with_the_peer_the_dialog_came_from() -> None:
    peer = Peer(core(), contact="<sip:alice@198.51.100.9:5070>")
    call_id = peer.call_up()
    peer.core.hangup(call_id, peer.now)
    bye = only(peer.drain(), act.SendRequest)
    assert bye.request.method == "BYE"
    assert (bye.addr, bye.transport) == (PEER, "udp")  # not the Contact's host


def test_contact_on_the_same_host_is_followed() -> None:
    peer = Peer(core(), contact=f"<sip:alice@{PEER[0]}:5070>")
    call_id = peer.call_up()
    peer.core.hangup(call_id, peer.now)
    assert only(peer.drain(), act.SendRequest).addr == (PEER[0], 5070)


def test_maximum_call_duration_ends_with_bye_and_reason() -> None:
    peer = Peer(core(max_call_seconds=60, media_timeout=0))
    peer.call_up()
    assert not peer.advance(59.9)
    bye = only(peer.advance(0.2), act.SendRequest)
    assert bye.request.method == "BYE"
    assert bye.request.headers.get("Reason") == MAX_DURATION_REASON


def test_silent_peer_times_out() -> None:
    peer = Peer(core(media_timeout=30))
    call_id = peer.call_up()
    check = only(peer.advance(30), act.CheckMedia)
    peer.core.media_activity(check.call_id, 5, peer.now)
    assert not peer.drain()
    only(peer.advance(30), act.CheckMedia)
    peer.core.media_activity(call_id, 5, peer.now)
    assert methods(peer.drain()) == ["BYE"]


def test_bye_on_the_early_dialog_ends_the_invite() -> None:
    peer = Peer(core())
    peer.send("INVITE", body=sdp_answer())
    ringing = only(peer.drain(), act.SendResponse).response
    peer.to = ringing.headers.get("To") or ""
    peer.send("BYE", cseq=2)
    assert statuses(peer.drain()) == [200, 487]


def test_a_route_to_a_configured_trunk_is_followed() -> None:
    from callgate.config import Trunk
    trunk = Trunk.model_validate({"address": "sip:198.51.100.9",
                                  "inbound_cidrs": ["203.0.113.0/24"]})
    peer = Peer(core(trunks={"sbc": trunk}), contact="<sip:alice@198.51.100.9:5070>")
    call_id = peer.call_up()
    peer.core.hangup(call_id, peer.now)
    assert only(peer.drain(), act.SendRequest).addr == ("198.51.100.9", 5070)
