"""Soak: many short calls with media, then the gateway must hold what it held before.

callgate runs in this process (auto-accepting with ``echo``) so its tables can be read; SIPp
places the calls: INVITE, 200, ACK, a second of PCMU from its RTP socket (``rtp_stream``,
which callgate echoes back), BYE. After a warm-up (lazy imports, first allocations) the
footprint at rest is taken; after the run, once every call, transaction and RTP port is gone,
it is taken again. It must be back: file descriptors, tasks, transactions, pending ACKs,
calls, dialogs, sessions, RTP ports and SIP connections at or below the warm values, and
RSS within ``RSS_GROWTH`` of its warm value. RSS is read after a full garbage collection and
``malloc_trim``: glibc keeps freed blocks for reuse (about 100 MB after a few hundred calls
with media here, returned at once when trimmed), cyclic garbage waits for the collector, and
the question is what the gateway still holds, not what the allocator caches. Full size
(``python -m bench.soak``): 10,000 calls at 100 calls/s; ``tests/e2e/test_soak.py`` runs it
small inside the suite.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from callgate import config
from callgate.media.g711 import ulaw_encode
from callgate.server import Gateway

NAME = "soak"
CALLS, RATE = 10_000, 100
QUICK_CALLS, QUICK_RATE = 100, 50
# Enough for what fills once (interned header names, the allocator's arenas at the soak's
# concurrency) to be full before the warm footprint is taken. Measured with a 400-call
# warm-up, three further rounds of 5,000 calls added 26 MB, 2.5 MB and 0.2 MB: the first
# thousands of calls raise the high-water mark once, then it holds.
WARM_CALLS = 2000
RSS_GROWTH = 0.10  # the bound: RSS within 10 % of its warm value
SETTLE_S = 5.0
PROJECT_ID = "proj_soak"
COUNTED = ("transactions", "pending_acks", "calls", "dialogs", "sessions", "rtp_ports",
           "connections")

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callgate soak: a call with a second of media each way">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [rtpstream_audio_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><exec rtp_stream="tone.ulaw,1,0"/></action></nop>
  <pause milliseconds="1200"/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


def _tone_ulaw(seconds: float = 1.0) -> bytes:
    """A 440 Hz tone as raw PCMU, what SIPp's rtp_stream sends in 20 ms packets."""
    t = np.arange(int(8000 * seconds)) / 8000
    return ulaw_encode((8000 * np.sin(2 * math.pi * 440 * t)).astype("<i2").tobytes())


def _held_rss_kb() -> int:
    """RSS once unreachable Python objects are collected and the C allocator has handed its
    cached free blocks back (glibc only)."""
    # Reference cycles that ended calls leave (exceptions with their tracebacks, futures
    # and their callbacks) wait for a full collection, which a loaded gateway runs rarely:
    # up to ~15 KB a call, all of it freed by the next one.
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE") // 1024


def footprint(gw: Gateway) -> dict[str, int]:
    assert gw.sip is not None and gw.calls is not None and gw.calls.core is not None
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "rss_kb": _held_rss_kb(),
        "transactions": len(gw.sip.endpoint.transactions),
        "pending_acks": len(gw.sip.endpoint.pending_acks),
        "calls": gw.calls.active_count,
        "dialogs": len(gw.calls.core.dialogs),
        "sessions": len(gw.sessions),
        "rtp_ports": gw.calls.port_pool.in_use,
        "connections": gw.sip.connection_count,
    }


async def _at_rest(gw: Gateway, timeout: float) -> dict[str, int]:
    """The footprint once no call, transaction or RTP port is left (or when ``timeout`` ends)
    and ``SETTLE_S`` more have passed: the last calls' release tasks, session closes and
    socket closes finish a moment after their calls leave the tables."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        now = footprint(gw)
        busy = now["calls"] or now["transactions"] or now["pending_acks"] or now["rtp_ports"]
        if not busy or loop.time() > deadline:
            await asyncio.sleep(SETTLE_S)
            return footprint(gw)
        await asyncio.sleep(0.25)


async def _sipp(gw: Gateway, calls: int, rate: int, workdir: Path) -> int:
    sipp = shutil.which("sipp")
    assert sipp is not None, "sipp is not installed"
    port = gw.sip_addresses["udp"][1]
    proc = await asyncio.create_subprocess_exec(
        sipp, f"127.0.0.1:{port}", "-sf", "soak.xml", "-s", PROJECT_ID, "-i", "127.0.0.1",
        "-p", str(common.free_port(both=False)), "-mi", "127.0.0.1",
        "-mp", str(common.free_port(both=False)),
        "-m", str(calls), "-r", str(rate), "-l", str(max(200, rate * 4)),
        "-timeout", f"{60 + calls // rate * 2}s", "-timeout_error", "-trace_stat", "-fd", "1",
        "-nostdin", cwd=workdir, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), timeout=180 + calls // rate * 3)


def sipp_failures(workdir: Path) -> dict[str, str]:
    """SIPp's cumulative failure counters from its last statistics line (why calls failed)."""
    stats = sorted(workdir.glob("*.csv"), key=lambda p: p.stat().st_mtime)
    if not stats:
        return {}
    lines = stats[-1].read_text().splitlines()
    head, last = lines[0].split(";"), lines[-1].split(";")
    return {k: v for k, v in zip(head, last, strict=False)
            if k.endswith("(C)") and ("Failed" in k or "Retrans" in k or "Dead" in k)
            and v not in ("", "0")}


class _MediaTally(logging.Handler):
    """Counts, from the ``media.close`` lines, the calls whose media flowed both ways."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.closed = self.both_ways = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != "media.close":
            return
        self.closed += 1
        if getattr(record, "packets_in", 0) > 0 and getattr(record, "packets_out", 0) > 0:
            self.both_ways += 1


async def run_soak(workdir: Path, calls: int, rate: int,
                   warm_calls: int = WARM_CALLS) -> dict[str, Any]:
    """Warm up, soak, and report the footprints and what SIPp saw (no verdict)."""
    (workdir / "soak.xml").write_text(SCENARIO)
    (workdir / "tone.ulaw").write_bytes(_tone_ulaw())
    tally = _MediaTally()
    media_logger = logging.getLogger("callgate.media.stream")
    media_logger.addHandler(tally)
    level = media_logger.level
    media_logger.setLevel(logging.INFO)
    # A fifth of the standard T1 so Timers H/J/L (64*T1) end in 6.4 s instead of 32 s; not
    # shorter: every 2xx waiting for its ACK is resent at T1, 2*T1, ..., and on a loaded
    # 2-core machine a 50 ms T1 turned a busy moment into a retransmission storm. A call whose
    # BYE never arrives is reclaimed by the media timeout, as in production.
    low = 20000 + (os.getpid() * 37 % 10000) // 2 * 2
    settings = config.load(
        sip_host="127.0.0.1", sip_port=common.free_port(), http_host="127.0.0.1",
        http_port=common.free_port(socket.SOCK_STREAM, both=False), project_id=PROJECT_ID,
        rtp_ports=f"{low}-{low + 2 * rate * 8}", log_level="warning",
        default_session={"type": "realtime", "model": "echo"}, sip_t1=0.1, sip_t4=0.5,
        media_timeout=10, sip_invite_rate=0, sip_probe_rate=0)
    gw = Gateway(settings)
    await gw.start()
    try:
        warm_code = await _sipp(gw, warm_calls, rate, workdir)
        before = await _at_rest(gw, 15)
        started = time.monotonic()
        code = await _sipp(gw, calls, rate, workdir)
        soak_s = time.monotonic() - started
        after = await _at_rest(gw, 30)
        assert gw.calls is not None
        left = sorted(f"{c.state.value}:{c.end_reason}" for c in gw.calls.core.calls.values())
    finally:
        await gw.stop()
        media_logger.removeHandler(tally)
        media_logger.setLevel(level)
    return {"calls": calls, "rate": rate, "warm_up_calls": warm_calls,
            "warm_up_sipp_exit": warm_code, "sipp_exit": code,
            "soak_s": round(soak_s, 1), "before": before, "after": after,
            "calls_left": left[:20], "media_closed": tally.closed,
            "media_both_ways": tally.both_ways, "sipp_failures": sipp_failures(workdir)}


def verdict(report: dict[str, Any]) -> list[str]:
    """What did not come back to its warm value (empty when all did)."""
    before, after = report["before"], report["after"]
    problems = [f"{key}: {before[key]} -> {after[key]}" for key in COUNTED
                if after[key] != before[key] or after[key] != 0]
    problems += [f"{key}: {before[key]} -> {after[key]}" for key in ("fds", "tasks")
                 if after[key] > before[key]]
    if after["rss_kb"] > before["rss_kb"] * (1 + RSS_GROWTH):
        problems.append(f"rss_kb: {before['rss_kb']} -> {after['rss_kb']} "
                        f"(over {RSS_GROWTH:.0%})")
    if report["sipp_exit"] != 0:
        problems.append(f"sipp exit {report['sipp_exit']}: {report['sipp_failures']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    if common.need("sipp", "sip-tester") is None:
        return 2
    started = time.time()
    calls, rate = (QUICK_CALLS, QUICK_RATE) if args.quick else (CALLS, RATE)
    with tempfile.TemporaryDirectory(prefix="callgate-bench-soak-") as tmp:
        report = asyncio.run(run_soak(Path(tmp), calls, rate))
    report["problems"] = verdict(report)
    print(json.dumps(report, indent=2))
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME,
                         quick=args.quick, started=started, machine=common.machine_info(),
                         results=report)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
