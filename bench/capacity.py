"""Capacity on one core: N concurrent G.711 calls with media both ways on the ``echo`` model.

callgate runs pinned to one core; this process, pinned to the other, places the calls
(bench/sipua.py) and carries their media (bench/rtp_load.py: 20 ms PCMU both ways, arrivals
stamped by the kernel). N rises level by level, the calls of a level staying up into the next;
at each level, after the jitter buffers settle, one window measures the gateway's CPU use, the
interval error of its outbound packets (|arrival gap - 20 ms|) p50/p99, loss (sequence gaps)
and delivery (packets received / packets due by the clock), RSS per call, and the echo delay
(RTP in -> RTP out). A level fails when the interval error p99 passes 5 ms, a packet is lost,
or fewer than 99.9 % of the packets due arrive; the ramp stops at the first failure.

``--upstream``: the calls run on the upstream-Realtime engine instead, callgate chained to
callgate. The measured gateway (A) takes the calls and speaks ``audio/pcmu`` to a second callgate
(B, the ``echo`` model on its ``/v1/realtime`` socket), so the μ-law payloads pass through both
undecoded. B runs on the generator's core; its CPU is reported beside A's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.inference_load import InferenceLoad
from bench.rtp_load import RtpLoad
from bench.sipua import CallFailed, Dialog, SipCaller

NAME = "capacity"
LEVELS = [10, 25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 600, 800]
QUICK_LEVELS = [5, 10]
TARGET_CALLS = 300
TARGET_P99_MS = 5.0
TARGET_RSS_MB_PER_CALL = 0.5
MIN_DELIVERY = 0.999
SETUP_CONCURRENCY = 10


async def _add_calls(caller: SipCaller, load: RtpLoad, dialogs: list[Dialog], n: int,
                     cps: float) -> tuple[int, float]:
    """Bring the number of calls up to ``n`` at about ``cps``; (failures, seconds taken)."""
    started = time.monotonic()
    failures = 0
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(i: int) -> None:
        nonlocal failures
        await asyncio.sleep(i / cps)
        async with gate:
            try:
                dialog = await caller.call()
            except (CallFailed, ValueError, StopIteration):
                failures += 1
                return
        dialogs.append(dialog)
        load.add(dialog.remote_rtp)

    await asyncio.gather(*(one(i) for i in range(n - len(dialogs))))
    return failures, time.monotonic() - started


async def _hangup_all(caller: SipCaller, load: RtpLoad, dialogs: list[Dialog]) -> None:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY * 2)

    async def one(dialog: Dialog) -> None:
        load.remove(dialog.remote_rtp)
        async with gate:
            await caller.hangup(dialog)

    await asyncio.gather(*(one(d) for d in dialogs))
    dialogs.clear()


def _judge(window: dict[str, Any]) -> tuple[bool, str]:
    p99 = window["interval_error_ms"]["p99"]
    if p99 is None:
        return False, "no packets came back"
    if p99 > TARGET_P99_MS:
        return False, f"interval error p99 {p99} ms > {TARGET_P99_MS:g} ms"
    if window["lost_seq_gaps"]:
        return False, f"{window['lost_seq_gaps']} packets lost"
    if (window["delivery_ratio"] or 0) < MIN_DELIVERY:
        return False, f"only {window['delivery_ratio']:.4f} of the packets due arrived"
    return True, "ok"


async def measure(gateway: common.Measured, levels: list[int], *, window_s: float,
                  settle_s: float, cps: float, profile_dir: Path | None = None,
                  profile_cpu: int | None = None, digital_silence: bool = False,
                  inference: int = 0, upstream: common.Measured | None = None
                  ) -> dict[str, Any]:
    load = RtpLoad(digital_silence=digital_silence)
    talkers = InferenceLoad(gateway.http_port, inference) if inference else None
    caller = SipCaller(("127.0.0.1", gateway.sip_port), common.PROJECT_ID, media_port=load.port)
    await caller.open()
    load.start()
    dialogs: list[Dialog] = []
    rows: list[dict[str, Any]] = []
    first_failing: int | None = None
    first_loss: int | None = None
    try:
        await _add_calls(caller, load, dialogs, 3, cps)  # warm-up: imports, first allocations
        await asyncio.sleep(1.0)
        await _hangup_all(caller, load, dialogs)
        if talkers is not None:
            talkers.start()
            while talkers.turns + talkers.failed < talkers.talkers:  # the models are loaded
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        rss_idle = gateway.rss_bytes()
        cpu_idle_0, t0 = gateway.cpu_seconds(), time.monotonic()
        await asyncio.sleep(min(2.0, window_s))
        idle_cpu = 100 * (gateway.cpu_seconds() - cpu_idle_0) / (time.monotonic() - t0)
        for n in levels:
            failures, setup_s = await _add_calls(caller, load, dialogs, n, cps)
            await asyncio.sleep(settle_s)
            with common.profiled(gateway.pid, (profile_dir or Path()) / f"capacity-{n}.txt",
                                 enabled=profile_dir is not None, cpu=profile_cpu) as profile:
                cpu_0, own_0, t0 = gateway.cpu_seconds(), os.times(), time.monotonic()
                up_0 = upstream.cpu_seconds() if upstream is not None else 0.0
                wait_0 = gateway.runqueue_wait_seconds()
                load.begin_window()
                await asyncio.sleep(window_s)
                window = load.end_window()
            elapsed = time.monotonic() - t0
            own_1 = os.times()
            cpu = 100 * (gateway.cpu_seconds() - cpu_0) / elapsed
            waited = 100 * (gateway.runqueue_wait_seconds() - wait_0) / elapsed
            rss = gateway.rss_bytes()
            row = {
                "calls": len(dialogs), "setup_failures": failures,
                "setup_seconds": round(setup_s, 1),
                "gateway_cpu_percent": round(cpu, 1),
                # runnable but not running: other processes on the gateway's core
                "gateway_runqueue_wait_percent": round(waited, 1),
                "gateway_rss_mb": round(rss / 2**20, 1),
                "rss_mb_per_call": round((rss - rss_idle) / 2**20 / max(1, len(dialogs)), 3),
                "generator_cpu_percent": round(
                    100 * (own_1.user + own_1.system - own_0.user - own_0.system) / elapsed, 1),
                "ended_by_gateway": caller.ended_by_gateway,
                **({"upstream_cpu_percent": round(
                    100 * (upstream.cpu_seconds() - up_0) / elapsed, 1)}
                   if upstream is not None else {}),
                "load_average": common.load_average(), **window}
            if profile:
                row["profile"] = profile
            row["passed"], row["why"] = _judge(window)
            if failures:
                row["passed"], row["why"] = False, f"{failures} call setups failed"
            rows.append(row)
            err = window["interval_error_ms"]
            print(f"  N={row['calls']:>4}: cpu {row['gateway_cpu_percent']:>5}% (waited "
                  f"{row['gateway_runqueue_wait_percent']}%)  interval error "
                  f"p50 {err['p50']} p99 {err['p99']} max {err['max']} ms  loss "
                  f"{window['lost_seq_gaps']}  delivery {window['delivery_ratio']}  echo p50 "
                  f"{window['echo_delay_ms']['p50']} ms  rss/call {row['rss_mb_per_call']} MB"
                  f"  -> {'pass' if row['passed'] else 'FAIL: ' + row['why']}", flush=True)
            if not row["passed"] and first_failing is None:
                first_failing = n
            # Past the pacing limit, go on to where packets are lost (or calls fail): both
            # points are reported.
            if window["lost_seq_gaps"] or (window["delivery_ratio"] or 0) < MIN_DELIVERY \
                    or failures or row["gateway_cpu_percent"] > 97 * gateway.cores:
                first_loss = n
                break
    finally:
        inference_turns = await talkers.stop() if talkers is not None else None
        await _hangup_all(caller, load, dialogs)
        await asyncio.sleep(0.5)
        load.close()
        caller.close()
    passing = [r["calls"] for r in rows
               if r["passed"] and (first_failing is None or r["calls"] < first_failing)]
    return {"idle_cpu_percent": round(idle_cpu, 1), "idle_rss_mb": round(rss_idle / 2**20, 1),
            "levels": rows, "max_calls_passing": max(passing) if passing else 0,
            "inference_load": inference_turns,
            "first_failing_calls": first_failing, "first_loss_or_saturation_calls": first_loss}


_STATS = re.compile(r"event=call\.media_stats .*?jitter_delay_ms=([\d.]+)")


def _jitter_delays(log: list[str]) -> list[float]:
    return [float(m.group(1)) for line in log if (m := _STATS.search(line))]


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    parser.add_argument("--window", type=float, default=None, help="seconds measured per level")
    parser.add_argument("--profile", action="store_true",
                        help="sample the gateway with py-spy during each window")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="comma-separated call counts (default: 25,50,100,...)")
    parser.add_argument("--inference", type=int, default=0, metavar="N",
                        help="N Realtime sessions on the local engine asking questions back "
                             "to back beside the echo calls (STT, LLM and TTS always busy)")
    parser.add_argument("--digital-silence", action="store_true",
                        help="callers send all-zero audio between tone bursts instead of line "
                             "noise (the gateway's silence path)")
    parser.add_argument("--records", action=argparse.BooleanOptionalAction, default=True,
                        help="keep call records in SQLite, as callgate does by default "
                             "(--no-records: off, to measure what they cost)")
    parser.add_argument("--record-calls", action="store_true",
                        help="also record every call's audio to WAV")
    parser.add_argument("--upstream", action="store_true",
                        help="run the calls on the upstream-Realtime engine: the gateway "
                             "chained to a second callgate's echo over G.711")
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    started = time.time()
    machine = common.machine_info()
    cpu, load_cpu = common.cpu_plan()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    levels = args.levels or (QUICK_LEVELS if args.quick else LEVELS)
    window_s = args.window or (1.0 if args.quick else 10.0)
    settle_s = 0.5 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="callgate-bench-capacity-") as tmp, \
            contextlib.ExitStack() as stack:
        settings = {"records": str(args.records).lower(),
                    "record_calls": str(args.record_calls).lower()}
        upstream = None
        if args.upstream:
            (Path(tmp) / "upstream").mkdir()
            upstream = stack.enter_context(common.callgate(Path(tmp) / "upstream", cpu=load_cpu))
            route = {"engine": "realtime", "model": "echo",
                     "url": f"ws://127.0.0.1:{upstream.http_port}/v1/realtime"}
            settings.update(models=json.dumps({"up": route}),
                            default_session=json.dumps({"type": "realtime", "model": "up"}))
        with common.callgate(Path(tmp), cpu=cpu, **settings) as gateway:
            measured = _run(measure(gateway, levels, window_s=window_s, settle_s=settle_s,
                                    cps=50.0, profile_dir=Path(tmp) if args.profile else None,
                                    profile_cpu=load_cpu, digital_silence=args.digital_silence,
                                    inference=args.inference, upstream=upstream))
            time.sleep(0.5)
        jitter = _jitter_delays(gateway.log_lines())
    best = measured["max_calls_passing"]
    at_best = next((r for r in measured["levels"] if r["calls"] == best), None)
    results: dict[str, Any] = {
        "model": ("upstream Realtime engine (audio/pcmu) to a second callgate's echo"
                  if args.upstream else "echo")
        + (f" beside {args.inference} local-engine sessions" if args.inference else ""),
        "codec": "PCMU", "ptime_ms": 20, "window_s": window_s,
        "call_records": args.records, "call_recordings": args.record_calls,
        "caller_audio": ("digital silence" if args.digital_silence else "line noise, -55 dBFS")
        + " between 1 kHz tone bursts (one 20 ms burst a second)",
        "pinning": {"gateway_cpu": cpu, "generator_cpu": load_cpu},
        "pass_rule": (f"interval error p99 <= {TARGET_P99_MS:g} ms, no sequence gaps, "
                      f">= {MIN_DELIVERY:.1%} of due packets delivered"),
        **measured,
        "jitter_buffer_delay_ms_at_hangup": common.summarize(jitter, digits=1),
        "summary": {
            "max_calls_one_core": best, "target_calls": TARGET_CALLS,
            "first_failing_calls": measured["first_failing_calls"],
            "first_loss_or_saturation_calls": measured["first_loss_or_saturation_calls"],
            "interval_error_p99_ms_at_max": (at_best["interval_error_ms"]["p99"]
                                             if at_best else None),
            "target_interval_error_p99_ms": TARGET_P99_MS,
            "rss_mb_per_call_at_max": at_best["rss_mb_per_call"] if at_best else None,
            "target_rss_mb_per_call": TARGET_RSS_MB_PER_CALL,
            "cpu_percent_at_max": at_best["gateway_cpu_percent"] if at_best else None,
            "echo_delay_p50_ms_at_max": at_best["echo_delay_ms"]["p50"] if at_best else None,
            "echo_delay_p95_ms_at_max": at_best["echo_delay_ms"]["p95"] if at_best else None,
            "jitter_buffer_delay_ms_mean": (round(statistics.fmean(jitter), 1)
                                            if jitter else None),
            "peer_published_calls_per_core": 185,
            "ratio_to_peer": round(best / 185, 2),
        }}
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME, quick=args.quick,
                         started=started, machine=machine, results=results)
    print(json.dumps(results["summary"], indent=2))
    return 0


def _run(coro: Any) -> Any:
    with contextlib.suppress(ImportError):
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
