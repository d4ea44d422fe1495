"""Each benchmark runs in its --quick mode and writes a well-formed results file.

The numbers of a quick run mean nothing (tiny N, one-second steps, a machine busy with the
rest of the suite); what is checked is that every benchmark still drives real calls through
a real gateway end to end and records machine, load and results in the agreed shape.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="sipp is not installed (Debian sip-tester)")


def _run(name: str, tmp_path: Path, timeout: float) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["benchmark"] == name and doc["quick"] is True
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1 and machine["python"]
    assert len(machine["load_average"]) == 3 and len(doc["load_average_after"]) == 3
    return doc["results"]  # type: ignore[no-any-return]


def test_setup_rate_quick(tmp_path: Path) -> None:
    results = _run("setup_rate", tmp_path, timeout=120)
    for key in ("callgate_auto_accept", "callgate_webhook"):
        steps = results[key]["steps"]
        assert steps, key
        assert all(s["successful"] == s["calls"] > 0 for s in steps), steps
        assert results[key]["max_rate_cps"] == steps[-1]["rate"]
        if results["latency_measured_by"]:  # a packet socket (root) times INVITE -> 200
            assert steps[0]["invite_to_200_ms"]["n"] == steps[0]["calls"]
            assert 0 < steps[0]["invite_to_200_ms"]["p50"] < 1000
    assert "callgate_auto_accept" in results["summary"]
    kamailio = results["kamailio"]
    assert "skipped" in kamailio or kamailio["steps"][0]["successful"] > 0


def test_capacity_quick(tmp_path: Path) -> None:
    results = _run("capacity", tmp_path, timeout=90)
    levels = results["levels"]
    assert [r["calls"] for r in levels] == [5, 10][:len(levels)] and levels
    first = levels[0]
    assert first["setup_failures"] == 0
    assert first["packets_received"] > 0.9 * first["packets_expected_by_time"]
    assert first["interval_error_ms"]["n"] > 0 and first["gateway_cpu_percent"] > 0
    assert first["echo_delay_ms"]["n"] > 0  # the echo model sent the tone bursts back
    assert results["summary"]["target_calls"] == 300


def test_voice_latency_quick(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    results = _run("voice_latency", tmp_path, timeout=150)
    echo = results["echo"]
    assert echo["onset_transit_ms"]["n"] == 1 and echo["onset_transit_ms"]["p50"] > 0
    local = results["local"]
    assert local["voice_to_voice_ms"]["n"] == 1, local["trials"]
    assert local["stt_ms"]["n"] == 1 and local["turn_detection_wait_ms"]["p50"] >= 0
    # A session that sets server_vad itself waits out its silence; the default profile may not.
    assert results["local-vad500"]["turn_detection_wait_ms"]["p50"] >= 500
    assert "llm" in results


@pytest.mark.skipif(shutil.which("kamailio") is None or shutil.which("redis-server") is None,
                    reason="kamailio and redis-server are needed (Debian packages)")
def test_cluster_quick(tmp_path: Path) -> None:
    results = _run("cluster", tmp_path, timeout=180)
    for count in (1, 2):
        steps = results["setup_rate"][f"nodes_{count}"]["steps"]
        assert steps and all(s["successful"] == s["calls"] > 0 for s in steps), steps
        # Calls through Kamailio carried media both ways (the ACK followed its route set).
        first = results["capacity"][f"nodes_{count}"]["levels"][0]
        assert first["setup_failures"] == 0, first
        assert first["packets_received"] > 0.9 * first["packets_expected_by_time"], first
    forwarding = results["forwarding"]
    for part, kinds in (("rest_hangup_ms", ("direct", "forwarded")),
                        ("ws_event_round_trip_ms", ("direct", "relayed"))):
        for kind in kinds:
            assert forwarding[part][kind]["n"] == forwarding["samples"]
            assert forwarding[part][kind]["p50"] > 0


def test_observe_cost_quick(tmp_path: Path) -> None:
    results = _run("observe_cost", tmp_path, timeout=60)
    assert results["records_written"] > 0
    for key in ("sampling_us_per_call_second", "observer_events_us_per_call",
                "records_us_per_call"):
        assert results[key] > 0, results
