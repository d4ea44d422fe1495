"""/metrics scraped during and after real calls (issue 15, "Must show" 2).

SIPp places two calls that a webhook receiver (the ``openai`` SDK) accepts with the ``echo``
model. Each plays 3 s of PCMU from a capture this test writes; the second capture leaves out
every fifth packet. The scrapes must say what happened: one call up while it runs, then two
calls set up with 200, their INVITE→200 and webhook round trips observed, the packets that
came and went, and an estimated MOS that is good for the clean call and poor for the lossy
one (the records say which call got which).
"""

from __future__ import annotations

import math
import struct
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Gateway, SippResult, callgate, sipp
from tests.e2e.receiver import SECRET, Receiver
from tests.e2e.test_dtmf_pcap import can_send_raw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

API_KEY = "sk-callgate-metrics-test"
PACKETS = 150  # 3 s of 20 ms packets


def write_pcap(path: Path, *, drop_every: int = 0) -> int:
    """A libpcap file of PCMU RTP packets (Ethernet/IPv4/UDP) 20 ms apart, carrying a 440 Hz
    tone; with ``drop_every`` = n every n-th packet is left out (a sequence gap). Returns
    the number of packets written."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    written = 0
    for seq in range(PACKETS):
        if drop_every and seq % drop_every == drop_every - 1:
            continue
        payload = bytes(_ulaw(int(8000 * math.sin(2 * math.pi * 440 * (seq * 160 + i) / 8000)))
                        for i in range(160))
        rtp = struct.pack(">BBHII", 0x80, 0, seq, seq * 160, 0x1234ABCD) + payload
        udp = struct.pack(">HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        usec = seq * 20_000
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame),
                               len(frame)) + frame)
        written += 1
    path.write_bytes(b"".join(out))
    return written


def _ulaw(sample: int) -> int:
    """G.711 µ-law encoding of one 16-bit sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(magnitude.bit_length() - 8, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def scrape(gw: Gateway, api_key: str = API_KEY
           ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{gw.http}/metrics", timeout=5,
                         headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_real_calls(tmp_path: Path) -> None:
    if not can_send_raw():
        pytest.skip("SIPp plays captures through a raw socket: needs CAP_NET_RAW")
    (tmp_path / "pcap").mkdir()
    accepted: list[str] = []

    def accept(client: openai.OpenAI, call_id: str) -> None:
        accepted.append(call_id)
        client.realtime.calls.accept(call_id, type="realtime", model="echo")

    receiver = Receiver("http://unused/v1", accept, api_key=API_KEY)
    with receiver, callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                            api_key=API_KEY) as gw:
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        assert httpx.get(f"{gw.http}/metrics", timeout=5).status_code == 401

        # Call 1, clean; scraped while it is up.
        sent_clean = write_pcap(tmp_path / "pcap" / "call.pcap")
        result: list[SippResult] = []
        runner = threading.Thread(target=lambda: result.append(
            sipp(gw, "uac_pcap_audio", tmp_path, timeout=30)))
        runner.start()
        during = _wait_for(gw, lambda m: value(m, "callgate_calls_in_progress", state="active",
                                               direction="inbound") == 1)
        assert value(during, "callgate_sessions_active", model="echo") == 1
        runner.join(timeout=40)
        assert result and result[0].successful == 1, result and result[0].output

        # Call 2: every fifth packet lost on the way.
        sent_lossy = write_pcap(tmp_path / "pcap" / "call.pcap", drop_every=5)
        lossy = sipp(gw, "uac_pcap_audio", tmp_path, timeout=30)
        assert lossy.successful == 1, lossy.output
        after = _wait_for(gw, lambda m: value(m, "callgate_call_mos_count") == 2)
        records = httpx.get(f"{gw.http}/v1/realtime/calls", timeout=5,
                            headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]

    assert not receiver.errors, receiver.errors
    print({k: v for k, v in after.items() if k[0].startswith("callgate_") and v})
    assert value(after, "callgate_calls_total", direction="inbound") == 2
    assert value(after, "callgate_calls_ended_total", state="ended", direction="inbound") == 2
    assert value(after, "callgate_calls_in_progress", state="active", direction="inbound") == 0
    assert value(after, "callgate_sessions_active", model="echo") == 0
    assert value(after, "callgate_call_setup_total", status="200") == 2
    assert value(after, "callgate_invite_to_answer_seconds_count") == 2
    assert value(after, "callgate_webhook_seconds_count", outcome="delivered") == 2
    assert value(after, "callgate_webhook_failures_total", reason="refused") == 0
    received = value(after, "callgate_rtp_packets_total", direction="in")
    assert sent_clean + sent_lossy - 10 <= received <= sent_clean + sent_lossy
    assert value(after, "callgate_rtp_packets_total", direction="out") >= 2 * 150
    lost = value(after, "callgate_rtp_lost_total")
    assert PACKETS - sent_lossy - 3 <= lost <= PACKETS - sent_lossy + 3
    # One call rated good (above 4.3), one poor (20 % loss: below 3.0).
    assert value(after, "callgate_call_mos_bucket", le="3.0") == 1
    assert value(after, "callgate_call_mos_bucket", le="4.3") == 1
    assert value(after, "callgate_call_mos_bucket", le="4.5") == 2
    by_id = {r["id"]: r for r in records}
    first, second = (by_id[call_id]["quality"]["mos"] for call_id in accepted)
    print(f"MOS clean={first} lossy={second}")
    assert first > 4.3 > 3.0 > second


def _wait_for(gw: Gateway, ready: object, timeout: float = 20.0
              ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(gw)
        if callable(ready) and ready(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError("metrics never got there: " + repr(
                {k: v for k, v in samples.items() if k[0].startswith("callgate_") and v}))
        time.sleep(0.1)
