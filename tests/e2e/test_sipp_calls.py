"""SIPp against a running ``callgate serve``: the signalling a trunk or PBX relies on."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.harness import callgate, free_rtp_range, sipp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # A short T1 makes Timer H (64*T1) 3.2 s, so the lost-ACK case runs quickly.
    with callgate(tmp_path_factory.mktemp("gw"), sip_t1="0.05") as gw:
        yield gw


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_basic_call_caller_hangs_up(gateway, tmp_path: Path, transport: str) -> None:  # type: ignore[no-untyped-def]
    result = sipp(gateway, "uac_basic", tmp_path, transport=transport)
    assert result.returncode == 0, result.output
    assert result.successful == 1


def test_options_ping(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = sipp(gateway, "uac_options", tmp_path)
    assert result.returncode == 0, result.output


def test_lost_ack_retransmits_2xx_then_byes(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = sipp(gateway, "uac_lost_ack", tmp_path, timeout=30)
    assert result.returncode == 0, result.output
    # The unacknowledged 200 was retransmitted (SIPp counts the copies as retransmissions),
    # and BYE came only after Timer H (64*T1 = 3.2 s here), not before.
    screen = re.search(r"200 <-+\s+(\d+)\s+(\d+)", result.output)
    assert screen is not None and int(screen.group(2)) >= 3, result.output
    assert time.monotonic() - started >= 3.0
    assert any("Timer H" in line for line in gateway.events("call.state"))


def test_retransmitted_invite_is_absorbed(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = len(gateway.events("call.incoming"))
    result = sipp(gateway, "uac_invite_retransmit", tmp_path)
    assert result.returncode == 0, result.output
    assert len(gateway.events("call.incoming")) == before + 1


def test_hold_and_unhold(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = sipp(gateway, "uac_hold", tmp_path)
    assert result.returncode == 0, result.output
    directions = [m.group(1) for line in gateway.events("call.media_updated")
                  if (m := re.search(r"direction=(\w+)", line))]
    assert directions[-2:] == ["recvonly", "sendrecv"]


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_100_calls_at_20_cps(gateway, tmp_path: Path, transport: str) -> None:  # type: ignore[no-untyped-def]
    result = sipp(gateway, "uac_basic", tmp_path, transport=transport, calls=100, rate=20,
                  limit=60, timeout=60)
    assert result.returncode == 0, result.output
    assert result.successful == 100 and result.failed == 0


def test_cancel_while_ringing(tmp_path: Path) -> None:
    # A webhook endpoint that refuses connections keeps the call ringing (no one accepts).
    with callgate(tmp_path, webhook_url="http://127.0.0.1:9/hook",
                  webhook_secret="whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=", accept_timeout="20") as gw:
        result = sipp(gw, "uac_cancel", tmp_path)
        assert result.returncode == 0, result.output
        assert any("new=cancelled" in line for line in gw.events("call.state"))


def test_unknown_project_gets_404(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = sipp(gateway, "uac_basic", tmp_path, service="proj_someone_else")
    assert result.failed == 1
    assert any("status=404" in line for line in gateway.events("sip.request_refused"))


def test_call_limit_answers_503_with_retry_after(tmp_path: Path) -> None:
    with callgate(tmp_path, max_calls="1") as gw:
        result = sipp(gw, "uac_wait_caller_bye_long", tmp_path, calls=3, rate=50)
        assert result.successful == 1 and result.failed == 2, result.output
        assert len(gw.events("sip.overload")) == 2


def test_silent_caller_is_hung_up_after_media_timeout(tmp_path: Path) -> None:
    # SIPp sends no RTP at all: after media_timeout seconds callgate ends the call with BYE.
    with callgate(tmp_path, media_timeout="2") as gw:
        started = time.monotonic()
        result = sipp(gw, "uac_wait_bye", tmp_path, timeout=20)
        assert result.returncode == 0, result.output
        assert 2.0 <= time.monotonic() - started < 15
        assert gw.events("call.media_timeout")


def test_out_of_rtp_ports_answers_503_with_retry_after(tmp_path: Path) -> None:
    # One RTP port pair: the first call holds it, the second cannot get media and is told to
    # come back (503 + Retry-After) at once instead of ringing until the accept timeout.
    with callgate(tmp_path, rtp_ports=free_rtp_range(2)) as gw:
        result = sipp(gw, "uac_wait_caller_bye_long", tmp_path, calls=2, rate=50)
        assert result.successful == 1 and result.failed == 1, result.output
        assert len(gw.events("call.media_unavailable")) == 1
        assert any('new=failed reason="no free RTP port"' in line
                   for line in gw.events("call.state"))


def test_bye_reaches_a_contact_named_by_host_name(tmp_path: Path) -> None:
    # The caller's Contact says "localhost", not the address the call came from: callgate
    # sends its BYE where the dialog was established (the INVITE's source) rather than
    # resolving a name a caller chose, and the BYE still arrives.
    with callgate(tmp_path, media_timeout="2") as gw:
        result = sipp(gw, "uac_wait_bye", tmp_path, timeout=20,
                      keys={"contact_host": "localhost"})
        assert result.returncode == 0, result.output
        assert gw.events("call.media_timeout")
        assert not gw.events("sip.unresolved_destination")
