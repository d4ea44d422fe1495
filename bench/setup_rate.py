"""Call-setup rate: SIPp places INVITE -> 200 -> ACK -> BYE calls over UDP at rising rates.

Three systems answer, one after the other, on the same core with the same SIPp on the other:
callgate auto-accepting (no webhook: ``CALLGATE_DEFAULT_SESSION`` on the ``echo`` model),
callgate asking an instantly-answering webhook receiver (bench/webhook_receiver.py) that
accepts over REST, and Kamailio answering statelessly (bench/kamailio.cfg), the reference
ceiling. A rate passes when fewer than 0.1 % of its calls fail and INVITE -> 200 p99 stays
under T1 (500 ms, where SIP itself starts retransmitting): past that the answers come late
and the backlog only grows. INVITE -> 200 is timed on the wire with kernel timestamps
(bench/sipsniff.py). The ramp climbs until a rate fails, then bisects between the last
pass and the first failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import common, sipsniff
from bench.webhook_receiver import SECRET

NAME = "setup_rate"
T1_MS = 500.0
CALLGATE_RATES = [50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000]
KAMAILIO_RATES = [50, 500, 1000, 2000, 3000, 4000, 6000, 8000, 10000, 12000, 15000, 20000]
QUICK_CALLGATE_RATES = [20]
QUICK_KAMAILIO_RATES = [20]

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callgate setup rate: INVITE, 200, ACK, BYE, 200">
  <send retrans="500"><![CDATA[

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
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

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

  ]]></send>
  <send retrans="500"><![CDATA[

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

  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


@dataclass
class Target:
    """A system under test, listening for SIP on ``port``; ``cpu()`` reads its CPU time."""

    name: str
    port: int
    cpu: Callable[[], float]
    alive: Callable[[], bool]
    waited: Callable[[], float]
    extra: Callable[[], dict[str, Any]] = dict
    pid: int | None = None  # a Python process py-spy can sample


@dataclass
class Step:
    rate: int
    calls: int
    created: int
    successful: int
    failed: int
    retransmissions: int
    achieved_cps: float
    invite_to_200_ms: dict[str, float | int | None]
    invite_to_180_ms: dict[str, float | int | None]
    unanswered_on_wire: int
    sniffer_drops: int
    target_cpu_percent: float
    target_runqueue_wait_percent: float
    sipp_cpu_percent: float
    sniffer_cpu_percent: float
    passed: bool
    why: str
    profile: dict[str, Any] | None = None


# -- the load -----------------------------------------------------------------------------------

def run_step(target: Target, rate: int, duration: float, workdir: Path,
             sniffer: sipsniff.SipSniffer | None, cpu: int | None,
             profile: bool = False, quiet: bool = False) -> Step:
    calls = max(1, round(rate * duration))
    stat_file = workdir / f"sipp-{target.name}-{rate}-{time.monotonic_ns()}.csv"
    cmd = common.pinned([
        "sipp", f"127.0.0.1:{target.port}", "-sf", str(workdir / "setup.xml"),
        "-s", common.PROJECT_ID, "-i", "127.0.0.1", "-p", str(common.free_port(both=False)),
        "-mp", str(common.free_port(both=False)), "-t", "u1", "-m", str(calls),
        "-r", str(rate), "-l", str(max(1000, rate * 10)), "-recv_timeout", "5000",
        "-timeout", f"{int(duration) + 40}s", "-timeout_error", "-nostdin",
        "-max_recv_loops", "10000", "-max_sched_loops", "10000",
        "-trace_stat", "-stf", str(stat_file), "-fd", "3600"], cpu)
    if sniffer is not None:
        sniffer.reset()
    drops_before = sniffer.kernel_drops if sniffer is not None else 0
    cpu_before, wait_before, started = target.cpu(), target.waited(), time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sniff_before = sniffer.cpu_seconds if sniffer is not None else 0.0
    with common.profiled(target.pid or 0, workdir / f"profile-{target.name}-{rate}.txt",
                         enabled=profile and target.pid is not None, cpu=cpu) as profile_top:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=duration + 60)
        finally:
            common.stop(proc)
    elapsed = time.monotonic() - started
    cpu_used = target.cpu() - cpu_before
    waited = target.waited() - wait_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sipp_cpu = (children.ru_utime + children.ru_stime - children_before.ru_utime
                - children_before.ru_stime)
    sniff_cpu = (sniffer.cpu_seconds - sniff_before) if sniffer is not None else 0.0
    stats = _last_stats(stat_file)
    answered, ringing, unanswered = sniffer.take() if sniffer is not None else ([], [], 0)
    created = int(stats.get("OutgoingCall(C)", 0))
    successful = int(stats.get("SuccessfulCall(C)", 0))
    failed = max(int(stats.get("FailedCall(C)", 0)), calls - successful)
    sipp_elapsed = _seconds(stats.get("ElapsedTime(C)", "")) or elapsed
    latency = common.summarize(answered)
    step = Step(
        rate=rate, calls=calls, created=created, successful=successful, failed=failed,
        retransmissions=int(stats.get("Retransmissions(C)", 0)),
        achieved_cps=round(successful / sipp_elapsed, 1) if sipp_elapsed else 0.0,
        invite_to_200_ms=latency, invite_to_180_ms=common.summarize(ringing),
        unanswered_on_wire=unanswered,
        sniffer_drops=(sniffer.kernel_drops - drops_before) if sniffer is not None else 0,
        target_cpu_percent=round(100 * cpu_used / elapsed, 1),
        target_runqueue_wait_percent=round(100 * waited / elapsed, 1),
        sipp_cpu_percent=round(100 * sipp_cpu / elapsed, 1),
        sniffer_cpu_percent=round(100 * sniff_cpu / elapsed, 1), passed=False, why="")
    step.passed, step.why = _judge(step, target)
    step.profile = profile_top or None
    if not quiet:
        _print_step(target, step)
    return step


def _print_step(target: Target, step: Step) -> None:
    rate, successful, calls = step.rate, step.successful, step.calls
    latency = step.invite_to_200_ms
    print(f"  {target.name:>20} {rate:>6} cps: {successful}/{calls} ok, {step.retransmissions} "
          f"retrans, INVITE->200 p50 {latency['p50']} p99 {latency['p99']} ms, "
          f"cpu {step.target_cpu_percent}% (waited {step.target_runqueue_wait_percent}%, sipp "
          f"{step.sipp_cpu_percent}%, watcher {step.sniffer_cpu_percent}%) -> "
          f"{'pass' if step.passed else 'FAIL: ' + step.why}",
          flush=True)


def _judge(step: Step, target: Target) -> tuple[bool, str]:
    if not target.alive():
        return False, "the system under test exited"
    if step.failed * 1000 >= step.calls:
        return False, f"{step.failed} of {step.calls} calls failed (>= 0.1%)"
    p99 = step.invite_to_200_ms["p99"]
    if step.achieved_cps < 0.9 * step.rate:
        late = p99 is not None and p99 >= T1_MS
        who = ("SIPp (load generator)" if step.sipp_cpu_percent >= 85 and not late
               else "the target")
        return False, f"only {step.achieved_cps} cps completed; limited by {who}"
    if p99 is not None and p99 >= T1_MS:
        return False, f"INVITE->200 p99 {p99} ms >= T1 ({T1_MS:g} ms): answers lag the load"
    return True, "ok"


def _seconds(text: str) -> float:
    """SIPp's ``HH:MM:SS:uuuuuu`` elapsed time in seconds."""
    parts = text.split(":")
    if len(parts) != 4:
        return 0.0
    h, m, s, us = (int(p) for p in parts)
    return h * 3600 + m * 60 + s + us / 1e6


def _last_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [line.rstrip(";\n").split(";") for line in path.read_text().splitlines() if line]
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}


def ramp(open_target: Callable[[], contextlib.AbstractContextManager[Target]], rates: list[int],
         *, duration: float, bisect_rounds: int, workdir: Path, cpu: int | None,
         sniff: bool, profile: bool = False) -> dict[str, Any]:
    """Climb ``rates`` until one fails, then bisect; a fresh target after every failure (a
    backlog must not leak into the next rate)."""
    steps: list[Step] = []
    extra: dict[str, Any] = {}
    best: int | None = None
    fail: int | None = None
    plan = list(rates)
    rounds = 0
    while plan:
        with open_target() as target, _sniffer(target.port, sniff) as sniffer:
            run_step(target, max(5, plan[0] // 10), 1.0, workdir, None, cpu, quiet=True)
            while plan:
                rate = plan.pop(0)
                step = run_step(target, rate, duration, workdir, sniffer, cpu, profile)
                steps.append(step)
                if step.passed:
                    best = max(best or 0, rate)
                    continue
                fail = rate if fail is None else min(fail, rate)
                break
            extra = target.extra()
        if fail is None or best is None or rounds >= bisect_rounds:
            break
        middle = (best + fail) // 2
        if fail - best < max(10, best // 10):
            break
        plan = [middle]  # a pass raises ``best``, a failure lowers ``fail``
        rounds += 1
    return {"max_rate_cps": best, "first_failing_cps": fail, "steps": [asdict(s) for s in steps],
            **extra}


@contextlib.contextmanager
def _sniffer(port: int, enabled: bool) -> Iterator[sipsniff.SipSniffer | None]:
    if not enabled:
        yield None
        return
    with sipsniff.SipSniffer(port) as sniffer:
        yield sniffer


# -- the systems under test ---------------------------------------------------------------------

@contextlib.contextmanager
def callgate_target(workdir: Path, cpu: int | None, load_cpu: int | None, *, webhook: bool
                    ) -> Iterator[Target]:
    settings: dict[str, str] = {}
    receiver: subprocess.Popen[bytes] | None = None
    receiver_port = common.free_port(both=False)
    stats_file = workdir / f"receiver-{receiver_port}.json"
    if webhook:
        settings = {"webhook_url": f"http://127.0.0.1:{receiver_port}/hook",
                    "webhook_secret": SECRET}
    with common.callgate(workdir, cpu=cpu, **settings) as gateway:
        try:
            if webhook:
                receiver = common.spawn(
                    [sys.executable, "-m", "bench.webhook_receiver", "--port", str(receiver_port),
                     "--gateway", gateway.http, "--stats", str(stats_file)],
                    cpu=load_cpu, log=workdir / "receiver.log", cwd=common.REPO)
                _wait_tcp(receiver_port, receiver)

            def extra() -> dict[str, Any]:
                info: dict[str, Any] = {"rss_mb": round(common.rss_bytes(gateway.pid) / 2**20, 1)}
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    info["healthz"] = httpx.get(f"{gateway.http}/healthz", timeout=2).json()
                return info

            yield Target("callgate-webhook" if webhook else "callgate-auto-accept",
                         gateway.sip_port, lambda: common.cpu_seconds(gateway.pid),
                         lambda: gateway.process.poll() is None,
                         lambda: common.runqueue_wait_seconds(gateway.pid), extra, gateway.pid)
        finally:
            if receiver is not None:
                common.stop(receiver)
                with contextlib.suppress(OSError, ValueError):
                    print(f"  webhook receiver: {json.loads(stats_file.read_text())}", flush=True)


def _wait_tcp(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the webhook receiver exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError("the webhook receiver did not start")


@contextlib.contextmanager
def kamailio_target(workdir: Path, cpu: int | None, binary: str) -> Iterator[Target]:
    port = common.free_port(both=False)
    rundir = Path(tempfile.mkdtemp(prefix="kamailio-", dir=workdir))
    process = common.spawn(
        [binary, "-f", str(common.REPO / "bench" / "kamailio.cfg"), "-l",
         f"udp:127.0.0.1:{port}", "-DD", "-E", "-Y", str(rundir), "-w", str(rundir),
         "-m", "64", "-M", "8"], cpu=cpu, log=workdir / "kamailio.log")
    try:
        time.sleep(1.0)
        if process.poll() is not None:
            raise RuntimeError("kamailio exited:\n" + (workdir / "kamailio.log").read_text())
        yield Target("kamailio-stateless", port, lambda: common.group_cpu_seconds(process.pid),
                     lambda: process.poll() is None,
                     lambda: common.group_runqueue_wait_seconds(process.pid))
    finally:
        common.stop(process)


# -- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per rate step (default 10, quick 1)")
    parser.add_argument("--no-kamailio", action="store_true", help="skip the reference peer")
    parser.add_argument("--profile", action="store_true",
                        help="sample callgate with py-spy during each step")
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    started = time.time()
    machine = common.machine_info()
    if common.need("sipp", "sip-tester") is None:
        return 2
    cpu, load_cpu = common.cpu_plan()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process watches the wire beside SIPp
    duration = args.duration or (1.0 if args.quick else 10.0)
    bisect_rounds = 0 if args.quick else 2
    sniff = sipsniff.available()
    if not sniff:
        print("no packet socket (needs root/CAP_NET_RAW): INVITE->200 latency not measured",
              file=sys.stderr)
    results: dict[str, Any] = {
        "transport": "udp", "step_duration_s": duration, "pass_rule": (
            f"< 0.1% failed calls and INVITE->200 p99 < {T1_MS:g} ms"),
        "pinning": {"system_under_test_cpu": cpu, "sipp_cpu": load_cpu},
        "latency_measured_by": "packet socket on lo, kernel timestamps" if sniff else None,
        "callgate_log_level": "info", "callgate_model": "echo"}
    with tempfile.TemporaryDirectory(prefix="callgate-bench-setup-") as tmp:
        workdir = Path(tmp)
        (workdir / "setup.xml").write_text(SCENARIO)
        rates = QUICK_CALLGATE_RATES if args.quick else CALLGATE_RATES
        for webhook in (False, True):
            key = "callgate_webhook" if webhook else "callgate_auto_accept"
            print(f"{key}:", flush=True)
            results[key] = ramp(
                functools.partial(callgate_target, workdir, cpu, load_cpu, webhook=webhook),
                rates, duration=duration, bisect_rounds=bisect_rounds, workdir=workdir,
                cpu=load_cpu, sniff=sniff, profile=args.profile)
        binary = None if args.no_kamailio else common.need("kamailio", "kamailio")
        if binary is not None:
            print("kamailio:", flush=True)
            results["kamailio"] = ramp(
                lambda: kamailio_target(workdir, cpu, binary),
                QUICK_KAMAILIO_RATES if args.quick else KAMAILIO_RATES, duration=duration,
                bisect_rounds=bisect_rounds, workdir=workdir, cpu=load_cpu, sniff=sniff)
        else:
            results["kamailio"] = {"skipped": "kamailio is not installed (apt-get install "
                                              "kamailio)"}
    results["summary"] = _summary(results)
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME, quick=args.quick,
                         started=started, machine=machine, results=results)
    print(json.dumps(results["summary"], indent=2))
    return 0


def _first_step(part: dict[str, Any]) -> dict[str, Any] | None:
    steps = part.get("steps") or []
    return steps[0] if steps else None


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures: max rate and the INVITE->200 latency at the first (light) step,
    each beside its DESIGN target and as a ratio to Kamailio."""
    kam = results.get("kamailio", {})
    kam_rate = kam.get("max_rate_cps")
    kam_step = _first_step(kam) if "steps" in kam else None
    summary: dict[str, Any] = {}
    for key in ("callgate_auto_accept", "callgate_webhook"):
        part = results[key]
        first = _first_step(part)
        lat = first["invite_to_200_ms"] if first else {}
        entry: dict[str, Any] = {
            "max_rate_cps": part["max_rate_cps"], "target_cps": 500,
            "latency_at_cps": first["rate"] if first else None,
            "invite_to_200_p50_ms": lat.get("p50"), "invite_to_200_p95_ms": lat.get("p95"),
            "invite_to_200_p99_ms": lat.get("p99"), "target_p50_ms": 5, "target_p99_ms": 20}
        if kam_rate:
            entry["rate_vs_kamailio"] = round((part["max_rate_cps"] or 0) / kam_rate, 4)
        if kam_step is not None:
            kl = kam_step["invite_to_200_ms"]
            entry["kamailio_latency_at_cps"] = kam_step["rate"]
            for q in ("p50", "p99"):
                if kl.get(q) and lat.get(q) is not None and not math.isnan(kl[q]):
                    entry[f"{q}_latency_vs_kamailio"] = round(lat[q] / kl[q], 1)
        summary[key] = entry
    if "steps" in kam:
        first = _first_step(kam)
        summary["kamailio"] = {
            "max_rate_cps": kam_rate, "first_failing_cps": kam.get("first_failing_cps"),
            "latency_at_cps": first["rate"] if first else None,
            "invite_to_200_ms": first["invite_to_200_ms"] if first else None}
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
