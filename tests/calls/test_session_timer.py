"""RFC 4028 negotiation as the UAS answers it."""

from __future__ import annotations

import pytest

from callgate.calls.session_timer import MAX_SE, IntervalTooSmall, negotiate
from callgate.sip.message import Headers, Request, parse_uri


def _invite(*headers: tuple[str, str]) -> Request:
    base = [("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("From", "<sip:a@x>;tag=1"),
            ("To", "<sip:b@y>"), ("Call-ID", "c1"), ("CSeq", "1 INVITE")]
    return Request("INVITE", parse_uri("sip:b@y"), Headers([*base, *headers]), b"")


def test_peer_interval_and_refresher_are_kept() -> None:
    timer = negotiate(_invite(("Session-Expires", "3600;Refresher=uac"),
                              ("Supported", "timer")), default_interval=1800)
    assert timer.header() == "3600;refresher=uac"
    assert ("Require", "timer") in timer.response_headers()
    # The caller refreshes: we give up at interval - min(32, interval/3) (§10).
    assert timer.next_deadline(0.0) == 3600 - 32


def test_no_refresher_named_caller_supports_timer() -> None:
    timer = negotiate(_invite(("Session-Expires", "1350"), ("Supported", "100rel, timer")),
                      default_interval=1800)
    assert timer.header() == "1350;refresher=uac" and timer.required


def test_caller_without_timer_support_makes_us_refresh() -> None:
    timer = negotiate(_invite(), default_interval=1800)
    assert timer.header() == "1800;refresher=uas" and not timer.required
    assert ("Require", "timer") not in timer.response_headers()
    assert timer.next_deadline(10.0) == 10.0 + 900  # refresh at half the interval (§7.2)


def test_too_small_interval_gets_min_se() -> None:
    with pytest.raises(IntervalTooSmall) as info:
        negotiate(_invite(("Session-Expires", "60"), ("Supported", "timer")),
                  default_interval=1800)
    assert info.value.min_se == 90


def test_peer_min_se_raises_the_floor() -> None:
    timer = negotiate(_invite(("Session-Expires", "100"), ("Min-SE", "120"),
                              ("Supported", "timer")), default_interval=1800)
    assert timer.interval == 120


def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        negotiate(_invite(("Session-Expires", "soon")), default_interval=1800)


def test_a_huge_interval_is_lowered_to_the_documented_maximum() -> None:
    timer = negotiate(_invite(("Session-Expires", "99999999999999999999;refresher=uac"),
                              ("Supported", "timer")), default_interval=1800)
    assert timer.interval == MAX_SE == 7200 and timer.header() == "7200;refresher=uac"
    timer = negotiate(_invite(("Session-Expires", "100"), ("Min-SE", "99999999"),
                              ("Supported", "timer")), default_interval=1800)
    assert timer.interval == MAX_SE
    assert negotiate(_invite(), default_interval=1800, max_se=600).interval == 600
    with pytest.raises(ValueError):  # past Python's digit limit for int(): still a 400
        negotiate(_invite(("Session-Expires", "9" * 5000)), default_interval=1800)
