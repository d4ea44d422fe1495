"""Three callgate nodes behind Kamailio with Redis, on loopback, as ``callgate cluster`` runs them.

SIPp calls Kamailio; the application is a webhook receiver using only the ``openai`` SDK with
node1's base URL, so it drives calls that live on node2 and node3 through node1. Then node2 is
killed with SIGKILL and node3 is sent SIGTERM while calls are up.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import redis

from callgate import config
from callgate.cluster.launch import Cluster
from tests.cluster.nodes import API_KEY
from tests.e2e import harness
from tests.e2e.harness import PROJECT_ID, SippResult, free_rtp_range, sipp
from tests.e2e.receiver import SECRET, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCENARIO = "uac_wait_bye_8s"


@dataclass
class Front:
    """What harness.sipp needs of a gateway: where to send the calls (Kamailio)."""

    sip_port: int


class App:
    """Accepts every call through node1, then holds it until ``release`` and hangs it up."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.accepted: list[str] = []
        self.hangup_errors: dict[str, int] = {}

    def __call__(self, client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        self.accepted.append(call_id)
        self.release.wait(30)
        try:
            client.realtime.calls.hangup(call_id)
        except openai.APIStatusError as exc:
            self.hangup_errors[call_id] = exc.status_code

    def wait_accepted(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"{len(self.accepted)} of {count} accepted"
            time.sleep(0.05)


def _incoming(cluster: Cluster, name: str) -> int:
    log = cluster.workdir / f"{name}.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "event=call.incoming " in line)


def _owned(client: redis.Redis, node: str) -> set[str]:
    return set(client.smembers(f"callgate:calls:{node}"))  # type: ignore[arg-type]


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _calls(pool: ThreadPoolExecutor, kamailio: int, tmp: Path, count: int) -> Future[
        SippResult]:
    return pool.submit(sipp, Front(kamailio), SCENARIO, tmp, calls=count,  # type: ignore[arg-type]
                       rate=20, timeout=30)


def _observe(node1_port: int, call_id: str) -> str:
    async def main() -> str:
        client = openai.AsyncOpenAI(api_key=API_KEY, base_url=f"http://127.0.0.1:{node1_port}/v1",
                                    websocket_base_url=f"ws://127.0.0.1:{node1_port}/v1",
                                    max_retries=0)
        async with client, client.realtime.connect(call_id=call_id) as connection:
            await connection.session.update(session={"type": "realtime",
                                                     "instructions": "observed"})
            async with asyncio.timeout(10):
                async for ev in connection:
                    if ev.type == "session.updated":
                        return str(ev.session.instructions)
        return ""

    return asyncio.run(main())


def test_three_nodes_behind_kamailio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "SCENARIOS", Path(__file__).parent / "scenarios")
    base = random.randrange(21000, 29000, 10)
    settings = config.load(sip_host="127.0.0.1", sip_port=base, http_host="127.0.0.1",
                           http_port=base + 5, rtp_ports=free_rtp_range(600),
                           drain_timeout=20)
    app = App()
    receiver = Receiver(f"http://127.0.0.1:{base + 6}/v1", app, api_key=API_KEY)
    cluster = Cluster(settings, 3, tmp_path, env={
        "CALLGATE_WEBHOOK_URL": receiver.url, "CALLGATE_WEBHOOK_SECRET": SECRET,
        "CALLGATE_API_KEY": API_KEY, "CALLGATE_DEFAULT_MODEL": "echo",
        "CALLGATE_PROJECT_ID": PROJECT_ID, "CALLGATE_NODE_TTL": "1",
        "CALLGATE_ACCEPT_TIMEOUT": "15", "CALLGATE_LOG_LEVEL": "debug"})
    with receiver, ThreadPoolExecutor(4) as pool:
        cluster.start()
        store = redis.Redis.from_url(cluster.redis_url or "", decode_responses=True)
        try:
            node1, node2, node3 = cluster.nodes
            time.sleep(2)  # Kamailio's first probes mark the nodes up

            # 1. Calls spread over the nodes; node1's application drives all of them.
            first = _calls(pool, base, tmp_path, 9)
            app.wait_accepted(9)
            remote = sorted(_owned(store, "node2") | _owned(store, "node3"))
            assert remote, "every call landed on node1"
            assert _observe(node1.http_port, remote[0]) == "observed"
            app.release.set()
            result = first.result(timeout=60)
            assert result.successful == 9, result.output
            spread = [_incoming(cluster, n.name) for n in cluster.nodes]
            assert sum(1 for n in spread if n) >= 2, spread
            assert len(receiver.events) == 9  # one webhook per call, from its owner
            assert not receiver.errors and not app.hangup_errors

            # 2. SIGKILL node2 while calls are up: only its calls end.
            app.release.clear()
            app.accepted.clear()
            second = _calls(pool, base, tmp_path, 9)
            app.wait_accepted(9)
            doomed = _owned(store, "node2")
            os.killpg(node2.process.pid, signal.SIGKILL)
            node2.process.wait(timeout=10)
            killed_at = time.monotonic()
            _until(lambda: not store.exists("callgate:calls:node2")
                   and "node2" not in store.hkeys("callgate:nodes"), 6,
                   "node2's calls did not leave the registry")
            left_after = time.monotonic() - killed_at
            app.release.set()
            result = second.result(timeout=60)
            assert result.successful == 9 - len(doomed), result.output
            assert set(app.hangup_errors) == doomed
            assert set(app.hangup_errors.values()) <= {404, 410}
            after_kill = _calls(pool, base, tmp_path, 6)
            result = after_kill.result(timeout=60)
            assert result.successful == 6, result.output

            # 3. SIGTERM node3 with calls up: they finish normally, no new call lands there.
            app.release.clear()
            app.accepted.clear()
            third = _calls(pool, base, tmp_path, 6)
            app.wait_accepted(6)
            draining = _owned(store, "node3")
            before = _incoming(cluster, "node3")
            node3.process.send_signal(signal.SIGTERM)
            time.sleep(2.5)  # a probe or two: Kamailio has taken node3 out
            meanwhile = _calls(pool, base, tmp_path, 6)
            app.wait_accepted(12)
            assert _incoming(cluster, "node3") == before
            assert node3.process.poll() is None or not draining
            app.release.set()
            for future in (third, meanwhile):
                result = future.result(timeout=60)
                assert result.successful == 6, result.output
            assert node3.process.wait(timeout=20) == 0
            assert not app.hangup_errors.keys() - doomed
            print(f"registry cleared {left_after:.2f}s after SIGKILL; spread {spread}; "
                  f"node2 held {len(doomed)}, node3 drained {len(draining)}")
        finally:
            store.close()
            cluster.stop(drain=False, timeout=15)
