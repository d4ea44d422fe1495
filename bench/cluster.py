"""Several nodes behind Kamailio: call-setup rate and concurrent calls with 1 and 2 nodes, and
what forwarding costs.

* **Setup rate**: the ramp of ``bench.setup_rate`` (auto-accepted echo calls, SIPp INVITE ->
  200 -> ACK -> BYE) sent to Kamailio in front of ``callgate cluster``'s nodes, with 1 node and
  with 2; the result is the ratio 2-node / 1-node of the highest passing rate.
* **Capacity**: the ramp of ``bench.capacity`` (concurrent echo calls with PCMU both ways,
  judged on pacing, loss and delivery) through Kamailio to 1 node and to 2; again the ratio.
* **Forwarding**: with 2 nodes, a REST verb (``hangup`` of an ended call, answered from the
  owner's memory) straight to the owner and through the other node; and a Realtime event
  round trip (``session.update`` -> ``session.updated``) on a live call's socket, straight and
  relayed. The difference of the percentiles is what a forward adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import redis

from bench import capacity, common
from bench.setup_rate import CALLGATE_RATES, QUICK_CALLGATE_RATES, SCENARIO, Target, ramp
from callgate import config
from callgate.cluster.launch import Cluster

NAME = "cluster"
CAPACITY_LEVELS = [50, 100, 150, 200, 250, 300, 400]
WAIT_BYE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="one call held until the gateway hangs up">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
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
Max-Forwards: 70
Content-Length: 0
]]></send>
  <recv request="BYE" timeout="60000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0
]]></send>
</scenario>
"""


@contextlib.contextmanager
def cluster_target(workdir: Path, count: int, base: int) -> Iterator[tuple[Target, Cluster]]:
    settings = config.load(sip_host="127.0.0.1", sip_port=base, http_host="127.0.0.1",
                           http_port=base + 10, rtp_ports=common.RTP_PORTS, drain_timeout=0)
    run_dir = Path(tempfile.mkdtemp(prefix=f"nodes{count}-", dir=workdir))
    cluster = Cluster(settings, count, run_dir, env={
        "CALLGATE_PROJECT_ID": common.PROJECT_ID, "CALLGATE_LOG_LEVEL": "info",
        "CALLGATE_DEFAULT_MODEL": "echo",
        "CALLGATE_DEFAULT_SESSION": json.dumps({"type": "realtime", "model": "echo"})})
    cluster.start()
    try:
        time.sleep(2)  # Kamailio's first probes mark the nodes up
        nodes = _Nodes(cluster)
        assert cluster.kamailio is not None
        kamailio = cluster.kamailio.pid
        yield Target(
            f"cluster-{count}", base,
            cpu=lambda: nodes.cpu_seconds() + common.group_cpu_seconds(kamailio),
            alive=lambda: all(n.process.poll() is None for n in cluster.nodes),
            waited=nodes.runqueue_wait_seconds), cluster
    finally:
        cluster.stop(drain=False, timeout=15)


def setup_rates(workdir: Path, quick: bool, duration: float, base: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in (1, 2):
        print(f"{count} node(s):", flush=True)

        @contextlib.contextmanager
        def target(count: int = count) -> Iterator[Target]:
            with cluster_target(workdir, count, base) as (t, _):
                yield t

        results[f"nodes_{count}"] = ramp(
            target, QUICK_CALLGATE_RATES if quick else CALLGATE_RATES, duration=duration,
            bisect_rounds=0 if quick else 2, workdir=workdir, cpu=None, sniff=False)
    one, two = results["nodes_1"]["max_rate_cps"], results["nodes_2"]["max_rate_cps"]
    results["ratio_2_to_1"] = round(two / one, 2) if one and two else None
    return results


class _Nodes:
    """A cluster as the capacity benchmark measures it: calls go to Kamailio; CPU, run-queue
    wait and memory are the nodes' (each with its children), summed."""

    def __init__(self, cluster: Cluster) -> None:
        self.nodes = [n.process.pid for n in cluster.nodes]
        self.sip_port = cluster.settings.sip_port
        self.http_port = cluster.nodes[0].http_port
        self.cores = len(self.nodes)

    @property
    def pid(self) -> int:
        return self.nodes[0]

    def cpu_seconds(self) -> float:
        return sum(common.group_cpu_seconds(p) for p in self.nodes)

    def runqueue_wait_seconds(self) -> float:
        return sum(common.group_runqueue_wait_seconds(p) for p in self.nodes)

    def rss_bytes(self) -> int:
        return sum(common.rss_bytes(p) for p in self.nodes)


def capacities(workdir: Path, quick: bool, window_s: float, base: int) -> dict[str, Any]:
    """``bench.capacity``'s ramp (echo calls with media both ways) through Kamailio to 1 node,
    then to 2. Nothing is pinned: the nodes, Kamailio and the load generator share both
    cores, so the 2-node figure is what this machine gives, not what two free cores would."""
    results: dict[str, Any] = {}
    levels = capacity.QUICK_LEVELS if quick else CAPACITY_LEVELS
    for count in (1, 2):
        print(f"capacity, {count} node(s):", flush=True)
        with cluster_target(workdir, count, base) as (_, cluster):
            results[f"nodes_{count}"] = asyncio.run(capacity.measure(
                _Nodes(cluster), levels, window_s=window_s, settle_s=0.5 if quick else 3.0,
                cps=50.0))
    one, two = (results[f"nodes_{n}"]["max_calls_passing"] for n in (1, 2))
    results["ratio_2_to_1"] = round(two / one, 2) if one and two else None
    results["pass_rule"] = (f"interval error p99 <= {capacity.TARGET_P99_MS:g} ms, no sequence "
                            f"gaps, >= {capacity.MIN_DELIVERY:.1%} of due packets delivered")
    return results


def forwarding(workdir: Path, samples: int, base: int) -> dict[str, Any]:
    with cluster_target(workdir, 2, base) as (_, cluster):
        first, second = cluster.nodes
        (workdir / "hold.xml").write_text(WAIT_BYE)
        caller = subprocess.Popen(
            ["sipp", f"127.0.0.1:{base}", "-sf", str(workdir / "hold.xml"), "-s",
             common.PROJECT_ID, "-i", "127.0.0.1", "-p", str(common.free_port(both=False)),
             "-mp", str(common.free_port(both=False)), "-m", "8", "-r", "20", "-nostdin",
             "-timeout", "90s"], cwd=workdir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        store = redis.Redis.from_url(cluster.redis_url or "", decode_responses=True)
        try:
            live = _wait_owned(store, second.name)
            # The socket first: it needs the call up, and the REST samples end it.
            ws_direct, ws_relayed = asyncio.run(_ws(second.http_port, first.http_port, live,
                                                    samples))
            rest_direct, rest_forwarded = _rest(second.http, first.http, live, samples)
        finally:
            store.close()
            common.stop(caller)
    return {
        "samples": samples,
        "rest_hangup_ms": {"direct": common.summarize(rest_direct),
                           "forwarded": common.summarize(rest_forwarded)},
        "ws_event_round_trip_ms": {"direct": common.summarize(ws_direct),
                                   "relayed": common.summarize(ws_relayed)},
        "added_ms": {
            "rest_p50": _added(rest_direct, rest_forwarded, 50),
            "rest_p99": _added(rest_direct, rest_forwarded, 99),
            "ws_p50": _added(ws_direct, ws_relayed, 50),
            "ws_p99": _added(ws_direct, ws_relayed, 99)},
    }


def _added(direct: list[float], other: list[float], q: float) -> float:
    return round(common.percentile(other, q) - common.percentile(direct, q), 3)


def _wait_owned(store: redis.Redis, node: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = sorted(store.smembers(f"callgate:calls:{node}"))  # type: ignore[arg-type]
        if calls:
            return str(calls[0])
        time.sleep(0.1)
    raise RuntimeError(f"no call landed on {node}")


def _rest(owner: str, other: str, call_id: str, samples: int) -> tuple[list[float], list[float]]:
    # A hangup ends the call the first time; every later one is an idempotent replay.
    direct: list[float] = []
    forwarded: list[float] = []
    with httpx.Client() as client:
        client.post(f"{owner}/v1/realtime/calls/{call_id}/hangup").raise_for_status()
        for _ in range(samples):
            for url, into in ((owner, direct), (other, forwarded)):
                started = time.perf_counter()
                client.post(f"{url}/v1/realtime/calls/{call_id}/hangup").raise_for_status()
                into.append((time.perf_counter() - started) * 1000)
    return direct, forwarded


async def _ws(owner: int, other: int, call_id: str, samples: int) -> tuple[list[float],
                                                                          list[float]]:
    results: list[list[float]] = []
    for port in (owner, other):
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1",
                                    websocket_base_url=f"ws://127.0.0.1:{port}/v1",
                                    max_retries=0)
        times: list[float] = []
        async with client, client.realtime.connect(call_id=call_id) as connection:
            for n in range(samples):
                started = time.perf_counter()
                await connection.session.update(session={"type": "realtime",
                                                         "instructions": f"sample {n}"})
                async for ev in connection:
                    if ev.type == "session.updated":
                        break
                times.append((time.perf_counter() - started) * 1000)
        results.append(times)
    return results[0], results[1]


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(NAME, __doc__)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per rate step (default 10, quick 1)")
    args = parser.parse_args(argv)
    common.set_nice(args.nice)
    started = time.time()
    machine = common.machine_info()
    for command, package in (("sipp", "sip-tester"), ("kamailio", "kamailio"),
                             ("redis-server", "redis-server")):
        if common.need(command, package) is None:
            return 2
    base = 31000 + (int(started) % 200) * 20
    with tempfile.TemporaryDirectory(prefix="callgate-bench-cluster-") as tmp:
        workdir = Path(tmp)
        (workdir / "setup.xml").write_text(SCENARIO)
        results: dict[str, Any] = {
            "setup_rate": setup_rates(workdir, args.quick,
                                      args.duration or (1.0 if args.quick else 10.0), base),
            "capacity": capacities(workdir, args.quick, 1.0 if args.quick else 10.0, base),
            "forwarding": forwarding(workdir, 20 if args.quick else 500, base)}
    common.write_results(common.results_path(NAME, args.quick, args.out), NAME,
                         quick=args.quick, started=started, machine=machine, results=results)
    print(json.dumps({"ratio_2_to_1": results["setup_rate"]["ratio_2_to_1"],
                      "capacity_ratio_2_to_1": results["capacity"]["ratio_2_to_1"],
                      "forwarding_added_ms": results["forwarding"]["added_ms"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
