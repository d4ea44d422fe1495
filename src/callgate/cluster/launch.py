"""``callgate cluster --nodes N``: Redis, N callgate nodes and Kamailio in front, on one machine.

Node i listens for SIP on ``sip_port + i`` and HTTP on ``http_port + i``, with a slice of the RTP
port range of its own; Kamailio takes the configured ``sip_port`` and spreads calls over the
nodes. Every node answers the API for every call, so an application may use any node's URL.
SIGTERM drains each node (calls in progress may finish), SIGINT stops at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from callgate.config import Settings

KAMAILIO_CFG = Path(__file__).with_name("kamailio.cfg")


class ClusterError(RuntimeError):
    pass


@dataclass
class Node:
    name: str
    sip_port: int
    http_port: int
    process: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class Cluster:
    """The processes of a one-machine cluster; ``stop`` ends every one it started."""

    settings: Settings
    count: int
    workdir: Path
    config_file: Path | None = None
    redis_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # CALLGATE_* every node gets
    nodes: list[Node] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    kamailio: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        try:
            self._start_redis()
            for index in range(self.count):
                self.start_node(index)
            self._start_kamailio()
        except BaseException:
            self.stop(drain=False)
            raise

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        port = self.settings.sip_port + 1000 + self.count  # out of the nodes' way
        self.redis = _spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                            self.workdir / "redis.log")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        _wait_tcp(port, self.redis, "redis-server")

    def start_node(self, index: int) -> Node:
        s = self.settings
        low, high = s.rtp_port_range
        share = (high - low) // self.count // 2 * 2
        name = f"node{index + 1}"
        sip_port, http_port = s.sip_port + 1 + index, s.http_port + 1 + index
        env = dict(os.environ, **self.env, CALLGATE_REDIS_URL=self.redis_url or "",
                   CALLGATE_NODE_ID=name, CALLGATE_SIP_HOST="127.0.0.1",
                   CALLGATE_SIP_PORT=str(sip_port), CALLGATE_HTTP_HOST=s.http_host,
                   CALLGATE_HTTP_PORT=str(http_port),
                   CALLGATE_RTP_PORTS=f"{low + index * share}-{low + (index + 1) * share - 2}")
        argv = [sys.executable, "-m", "callgate.cli", "serve"]
        if self.config_file is not None:
            argv += ["--config", str(self.config_file)]
        node = Node(name, sip_port, http_port, _spawn(argv, self.workdir / f"{name}.log", env))
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        _wait_tcp(http_port, node.process, name)
        return node

    def _start_kamailio(self) -> None:
        binary = shutil.which("kamailio")
        if binary is None:
            raise ClusterError("kamailio is not installed (Debian package kamailio)")
        targets = self.workdir / "dispatcher.list"
        targets.write_text("".join(f"1 sip:127.0.0.1:{n.sip_port} 0 0\n" for n in self.nodes))
        host = self.settings.sip_host if self.settings.sip_host != "0.0.0.0" else "127.0.0.1"
        self.kamailio = _spawn(
            [binary, "-DD", "-E", "-f", str(KAMAILIO_CFG), "-Y", str(self.workdir),
             "-l", f"udp:{host}:{self.settings.sip_port}",
             "-A", f'DISPATCHER_LIST="{targets}"'], self.workdir / "kamailio.log")
        time.sleep(0.5)
        if self.kamailio.poll() is not None:
            raise ClusterError("kamailio exited: "
                               + (self.workdir / "kamailio.log").read_text()[-2000:])

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """SIGTERM (drain) or SIGINT to the nodes, then Kamailio and Redis go."""
        wait = (self.settings.drain_timeout + 15) if timeout is None else timeout
        for node in self.nodes:
            _signal(node.process, signal.SIGTERM if drain else signal.SIGINT)
        for node in self.nodes:
            _reap(node.process, wait)
        for process in (self.kamailio, self.redis):
            if process is not None:
                _signal(process, signal.SIGTERM)
                _reap(process, 10)


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[
        bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _wait_tcp(port: int, process: subprocess.Popen[bytes], what: str,
              timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise ClusterError(f"{what} did not listen on port {port} within {timeout:g}s")


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _reap(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run(settings: Settings, count: int, config_file: Path | None,
        redis_url: str | None) -> int:
    """The ``callgate cluster`` command: start everything, wait for a signal, stop it all."""
    with tempfile.TemporaryDirectory(prefix="callgate-cluster-") as tmp:
        cluster = Cluster(settings, count, Path(tmp), config_file, redis_url)
        stopping: list[int] = []

        def on_signal(sig: int, _frame: object) -> None:
            stopping.append(sig)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            cluster.start()
        except ClusterError as exc:
            print(f"callgate cluster: {exc} (logs in {tmp})", file=sys.stderr)
            return 1
        print(f"callgate cluster: SIP udp:{settings.sip_host}:{settings.sip_port} "
              f"(kamailio) -> {count} nodes; Redis {cluster.redis_url}; API on any of "
              + " ".join(n.http for n in cluster.nodes) + f"; logs in {tmp}", flush=True)
        reported: set[str] = set()
        while not stopping:
            # A node that died is reported, not restarted: the others carry on without it
            # and Kamailio's probes have taken it out.
            for node in cluster.nodes:
                if node.process.poll() is not None and node.name not in reported:
                    reported.add(node.name)
                    print(f"callgate cluster: {node.name} exited "
                          f"({node.process.returncode})", file=sys.stderr, flush=True)
            time.sleep(0.5)
        cluster.stop(drain=stopping[0] == signal.SIGTERM)
    return 0
