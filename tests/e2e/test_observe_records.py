"""Call records of real calls in a real PostgreSQL server, and that server dying mid-call
(issue 15, "Must show" 3): the call goes on and ends normally, the lost write is logged and
counted, and the next call is recorded once the server is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Gateway, SippResult, callgate, sipp
from tests.e2e.test_dtmf_pcap import can_send_raw
from tests.e2e.test_observe_metrics import scrape, value, write_pcap
from tests.observe.postgres import Postgres, pg_bin, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    with postgres_server() as server:
        yield server


def wait_until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (callable(check) and check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def calls(gw: Gateway) -> list[dict[str, object]]:
    response = httpx.get(f"{gw.http}/v1/realtime/calls", timeout=5)
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


def test_postgres_records_and_an_outage_mid_call(tmp_path: Path, postgres: Postgres) -> None:
    if not can_send_raw():
        pytest.skip("SIPp plays captures through a raw socket: needs CAP_NET_RAW")
    (tmp_path / "pcap").mkdir()
    write_pcap(tmp_path / "pcap" / "call.pcap")
    with callgate(tmp_path, database_url=postgres.url) as gw:
        # A call recorded from an empty database (the gateway migrated it at start).
        assert sipp(gw, "uac_pcap_audio", tmp_path, timeout=30).successful == 1
        wait_until(lambda: any(c["state"] == "ended" for c in calls(gw)))
        first = calls(gw)[0]
        assert first["direction"] == "inbound" and first["sip_status"] == 200
        assert first["model"] == "echo" and first["codec"] == "PCMU"
        assert str(first["to"]).startswith("sip:proj_test@")

        # The database dies while the next call is up.
        result: list[SippResult] = []
        runner = threading.Thread(target=lambda: result.append(
            sipp(gw, "uac_pcap_audio", tmp_path, timeout=30)))
        runner.start()
        wait_until(lambda: value(scrape(gw), "callgate_calls_in_progress", state="active",
                                 direction="inbound") == 1)
        # The database's copy follows the call's state: the list finds it by state.
        wait_until(lambda: len(httpx.get(f"{gw.http}/v1/realtime/calls",
                                         params={"state": "active"}).json()["data"]) == 1)
        postgres.stop("immediate")
        runner.join(timeout=40)
        assert result and result[0].successful == 1, result and result[0].output
        wait_until(lambda: value(scrape(gw), "callgate_records_dropped_total",
                                 reason="database") >= 1)
        assert gw.events("records.write_failed")
        assert httpx.get(f"{gw.http}/v1/realtime/calls", timeout=10).status_code == 503

        # Back again: the next call is recorded.
        postgres.start()
        assert sipp(gw, "uac_pcap_audio", tmp_path, timeout=30).successful == 1
        wait_until(lambda: sum(c["state"] == "ended" for c in calls(gw)) >= 2)
