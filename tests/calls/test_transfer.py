"""Transfers on a fake clock: every way a REFER can end, and what the application hears."""

from __future__ import annotations

from typing import Any

import pytest

from callgate.calls import actions as act
from callgate.calls.control import CallStateConflict
from callgate.calls.progress import TRANSFER_FAILED, TRANSFER_PROGRESS, TRANSFERRED
from callgate.calls.state import CallState
from callgate.observe.events import CallEvent, CallTransfer
from callgate.sip import events as ev
from tests.calls.core_harness import Peer, core, methods, of, only, statuses

TARGET = "sip:sales@example.org"


def notify(peer: Peer, frag: str, *, cseq: int, event: str = "refer") -> list[act.Action]:
    peer.send("NOTIFY", cseq=cseq, body=f"SIP/2.0 {frag}\r\n",
              extra=f"Event: {event}\r\nSubscription-State: active;expires=60\r\n"
                    "Content-Type: message/sipfrag;version=2.0\r\n")
    return peer.drain()


def referred(**settings: Any) -> tuple[Peer, str, act.SendRequest]:
    peer = Peer(core(media_timeout=0, **settings))
    call_id = peer.call_up()
    peer.core.refer(call_id, TARGET, peer.now)
    refer = only(peer.drain(), act.SendRequest)
    assert refer.request.method == "REFER"
    return peer, call_id, refer


def webhooks(actions: list[act.Action]) -> list[tuple[str, Any]]:
    return [(n.event["type"], n.event["data"]["sip_status"]) for n in of(actions, act.Notify)]


def test_progress_then_success_ends_the_call() -> None:
    peer, call_id, refer = referred()
    peer.answer(refer, 202)
    out = peer.drain() + notify(peer, "100 Trying", cseq=2) + notify(peer, "180 Ringing", cseq=3)
    assert webhooks(out) == [(TRANSFER_PROGRESS, 202), (TRANSFER_PROGRESS, 100),
                             (TRANSFER_PROGRESS, 180)]
    assert peer.core.calls[call_id].state is CallState.ACTIVE

    done = notify(peer, "200 OK", cseq=4)
    assert statuses(done) == [200]
    assert webhooks(done) == [(TRANSFERRED, 200)]
    assert methods(done) == ["BYE"]
    assert only(done, act.Release).reason == f"transferred to {TARGET}"
    data = only(done, act.Notify).event["data"]
    assert data == {"call_id": call_id, "target_uri": TARGET, "sip_status": 200,
                    "reason": "OK"}


def test_a_busy_target_leaves_the_call_up_and_tells_the_session() -> None:
    peer, call_id, refer = referred()
    seen: list[CallEvent] = []
    peer.core.observer = type("Seen", (), {"call_event": lambda self, e: seen.append(e)})()
    peer.answer(refer, 202)
    peer.drain()
    failed = notify(peer, "486 Busy Here", cseq=2)
    assert statuses(failed) == [200]
    assert webhooks(failed) == [(TRANSFER_FAILED, 486)]
    told = only(failed, act.TransferFailed)
    assert (told.call_id, told.target_uri, told.sip_status, told.reason) == \
        (call_id, TARGET, 486, "Busy Here")
    assert not of(failed, act.Release) and "BYE" not in methods(failed)
    assert peer.core.calls[call_id].state is CallState.ACTIVE
    steps = [(e.kind, e.sip_status) for e in seen if isinstance(e, CallTransfer)]
    assert steps == [(TRANSFER_PROGRESS, 202), (TRANSFER_FAILED, 486)]

    # The subscription is over: a late NOTIFY is refused, and the timeout stays quiet.
    assert statuses(notify(peer, "200 OK", cseq=3)) == [481]
    later = peer.advance(3600)
    assert not of(later, act.TransferFailed) and not of(later, act.Notify)
    # A new transfer may be tried.
    peer.core.refer(call_id, TARGET, peer.now)
    assert methods(peer.drain()) == ["REFER"]


def test_no_outcome_within_the_timeout_fails_the_transfer() -> None:
    peer, call_id, refer = referred(refer_timeout=30)
    peer.answer(refer, 202)
    peer.drain()
    notify(peer, "180 Ringing", cseq=2)
    assert not peer.advance(29.9)
    timed_out = peer.advance(0.2)
    told = only(timed_out, act.TransferFailed)
    assert told.sip_status is None and "30s" in told.reason
    assert webhooks(timed_out) == [(TRANSFER_FAILED, None)]
    assert peer.core.calls[call_id].state is CallState.ACTIVE


@pytest.mark.parametrize("status", [403, 405, 501])
def test_a_refused_refer_fails_the_transfer(status: int) -> None:
    peer, call_id, refer = referred()
    peer.answer(refer, status)
    told = only(peer.drain(), act.TransferFailed)
    assert told.sip_status == status and told.reason.startswith(f"REFER answered {status}")
    assert peer.core.calls[call_id].state is CallState.ACTIVE


def test_an_unanswered_refer_fails_the_transfer_not_the_call() -> None:
    peer, call_id, refer = referred()
    peer.core.handle_sip(ev.TransactionTimeout(refer.tx_key, "REFER", "F"), peer.now)
    told = only(peer.drain(), act.TransferFailed)
    assert told.sip_status == 408
    assert peer.core.calls[call_id].state is CallState.ACTIVE


def test_one_transfer_at_a_time() -> None:
    peer, call_id, _ = referred()
    peer.core.refer(call_id, TARGET, peer.now)  # a retry of the same request: nothing new
    assert not peer.drain()
    with pytest.raises(CallStateConflict, match="already being transferred"):
        peer.core.refer(call_id, "tel:+14155550123", peer.now)


@pytest.mark.parametrize(("frag", "event", "status"), [
    ("200 OK", "presence", 489),        # not the refer package
    ("garbage", "refer", 400),          # no status line
    ("99 Odd", "refer", 400),           # not a SIP status
])
def test_bad_notifies_are_refused(frag: str, event: str, status: int) -> None:
    peer, call_id, refer = referred()
    peer.answer(refer, 202)
    peer.drain()
    answered = notify(peer, frag, cseq=2, event=event)
    assert statuses(answered) == [status]
    assert not of(answered, act.Notify)
    assert peer.core.calls[call_id].refer_target == TARGET


def test_a_notify_with_no_transfer_is_refused() -> None:
    peer = Peer(core(media_timeout=0))
    peer.call_up()
    assert statuses(notify(peer, "200 OK", cseq=2)) == [481]
