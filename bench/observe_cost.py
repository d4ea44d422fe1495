"""What the operator view costs a call, measured on its own code rather than through the noise
of a whole-gateway run.

The capacity benchmark (``--records`` vs ``--no-records``, or this tree vs one from before
the operator view) varies more from run to run (about ±15 % of the gateway's CPU at the same
N) than the operator view can cost, so this measures its three parts directly, in one process
with stand-in media and sessions:

* **while a call runs**: the once-a-second media sample of each live call (``sample_all``:
  RTP and loss counters, MOS) and its update to viewers, per call per second;
* **once per call**: the call's observer events through ``CallWatch`` (started, state changes,
  answered, ended: metrics, the live record, the session follower);
* **once per call**: its record written to SQLite (five upserts, as a call's state changes),
  counted as this process's CPU time including the database thread.

The per-second figure divided by the gateway's CPU per call (the capacity benchmark: ~0.44 %
of a core, ~4.4 ms a second, on the machine this was written on) is the share the operator
view adds to a running call.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from callgate.media.formats import AudioFormat
from callgate.observe.events import CallAnswered, CallStarted, CallStateChanged
from callgate.observe.live import CallWatch
from callgate.observe.metrics import GatewayMetrics
from callgate.observe.records import RecordStore, database_url
from callgate.realtime.subscribers import Subscription

NAME = "observe_cost"
STATES = ("ringing", "answering", "accepted", "active", "ended")


# What the echo engine takes on a PCMU call.
PCMU = AudioFormat("pcmu", 8000)


class _Media:
    """The media statistics a live call exposes, advancing as 50 packets a second would."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"codec": "PCMU", "packets_in": 0, "packets_out": 0,
                                      "lost": 0, "late": 0, "jitter_ms": 1.0, "rtt_ms": None}
        self.on_audio: Callable[[bytes], None] | None = None
        self.audio_format = PCMU

    def send_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        pass

    def clear_output(self) -> int:
        return 0

    def advance(self) -> None:
        self.stats["packets_in"] += 50
        self.stats["packets_out"] += 50


class _Session:
    """An echo call's session: it says nothing while the call runs."""

    def __init__(self) -> None:
        self.timelines: list[dict[str, Any]] = []

    def subscribe(self) -> Subscription:
        return Subscription(lambda sub: None)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _life(watch: CallWatch, call_id: str) -> None:
    watch.call_event(CallStarted(call_id, f"{call_id}@peer", "inbound", "sip:a@b", "sip:c@d",
                                 1.0, "ringing"))
    watch.call_event(CallStateChanged(call_id, "ringing", "answering", "accept", 1.0, False))
    watch.call_event(CallAnswered(call_id, "echo", "PCMU", 1.0, _Media(), _Session(), PCMU))
    watch.call_event(CallStateChanged(call_id, "answering", "active", "ACK", 1.0, False))
    watch.call_event(CallStateChanged(call_id, "active", "ended", "hangup", 2.0, True))


async def measure(calls: int, seconds: int, lives: int, records: int) -> dict[str, Any]:
    watch = CallWatch(metrics=GatewayMetrics())
    media: list[_Media] = []
    for i in range(calls):
        watch.call_event(CallStarted(f"rtc_{i}", "x", "inbound", "a", "b", 1.0, "ringing"))
        media.append(_Media())
        watch.call_event(CallAnswered(f"rtc_{i}", "echo", "PCMU", 1.0, media[-1], _Session(),
                                       PCMU))
    started = _cpu()
    for _ in range(seconds):
        for one in media:
            one.advance()
        watch.sample_all()
    sample_us = (_cpu() - started) / seconds / calls * 1e6
    print(f"  sampling: {sample_us:.1f} us per call per second", flush=True)

    started = _cpu()
    for i in range(lives):
        _life(watch, f"rtc_life_{i}")
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the ended calls' followers finish
    await asyncio.sleep(0)
    life_us = (_cpu() - started) / lives * 1e6
    print(f"  observer events: {life_us:.0f} us per call", flush=True)
    await watch.close()

    with tempfile.TemporaryDirectory(prefix="callgate-bench-observe-") as tmp:
        store = RecordStore(database_url(None, Path(tmp)))
        await store.open()
        started = _cpu()
        for i in range(records):
            for state in STATES:
                store.save({"id": f"rtc_{i}", "sip_call_id": f"{i}@peer",
                            "direction": "inbound", "from": "sip:+15550100@trunk",
                            "to": "sip:proj@gw", "state": state, "started_at": 1000.0 + i,
                            "quality": {}, "transcript": [], "turns": []})
            if i % 100 == 0:
                await asyncio.sleep(0)
        await store.flush(timeout=120)
        record_us = (_cpu() - started) / records * 1e6
        await store.close()
    print(f"  records (SQLite): {record_us:.0f} us per call", flush=True)
    return {"live_calls": calls, "sampled_seconds": seconds, "call_lives": lives,
            "records_written": records,
            "sampling_us_per_call_second": round(sample_us, 2),
            "observer_events_us_per_call": round(life_us, 1),
            "records_us_per_call": round(record_us, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    started = time.time()
    machine = common.machine_info()
    sizes = (20, 5, 200, 200) if args.quick else (200, 100, 5000, 5000)
    results = asyncio.run(measure(*sizes))
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME,
                         quick=args.quick, started=started, machine=machine, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
