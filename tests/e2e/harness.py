"""Run a real ``callgate serve`` and real SIP peers (SIPp) on loopback, bounded and cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench.common import free_port

from callgate import config
from callgate.server import Gateway as InProcessGateway

SCENARIOS = Path(__file__).parent / "scenarios"
PROJECT_ID = "proj_test"


@contextlib.asynccontextmanager
async def in_process(rtp_ports: int = 200, **settings: Any) -> AsyncIterator[InProcessGateway]:
    """callgate in this process, on loopback, auto-accepting with ``echo``: for tests that
    look inside it (its tables, its timers) while real peers talk to it."""
    gateway = InProcessGateway(config.load(**{
        "sip_host": "127.0.0.1", "sip_port": free_port(), "http_host": "127.0.0.1",
        "http_port": free_port(socket.SOCK_STREAM, both=False), "project_id": PROJECT_ID,
        "rtp_ports": free_rtp_range(rtp_ports), "log_level": "warning",
        "default_session": {"type": "realtime", "model": "echo"}, **settings}))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def free_rtp_range(size: int = 200) -> str:
    """A port range for RTP unlikely to collide with parallel runs."""
    low = 20000 + (os.getpid() * 37 % 20000) // 2 * 2
    return f"{low}-{low + size}"


@dataclass
class Gateway:
    sip_port: int
    http_port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        scheme = "https" if self.env.get("CALLGATE_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, name: str) -> list[str]:
        return [line for line in self.log_lines() if f"event={name} " in line + " "]


@contextlib.contextmanager
def callgate(tmp_path: Path, **settings: str) -> Iterator[Gateway]:
    """``callgate serve`` as a subprocess, configured through CALLGATE_* variables."""
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM, both=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env.update({
        "CALLGATE_SIP_HOST": "127.0.0.1",
        "CALLGATE_SIP_PORT": str(sip_port),
        "CALLGATE_HTTP_HOST": "127.0.0.1",
        "CALLGATE_HTTP_PORT": str(http_port),
        "CALLGATE_PROJECT_ID": PROJECT_ID,
        "CALLGATE_RTP_PORTS": free_rtp_range(),
        "CALLGATE_DEFAULT_SESSION": json.dumps({"type": "realtime", "model": "echo"}),
        "CALLGATE_LOG_LEVEL": "debug",
    })
    env.update({f"CALLGATE_{k.upper()}": v for k, v in settings.items()})
    log_path = tmp_path / f"callgate-{sip_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "callgate.cli", "serve"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    gateway = Gateway(sip_port, http_port, log_path, process, env)
    try:
        _wait_ready(gateway)
        yield gateway
    finally:
        _stop(process)


def _wait_ready(gateway: Gateway, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError("callgate exited:\n" + gateway.log_path.read_text())
        try:
            # A self-signed test certificate: readiness is all this checks.
            if httpx.get(f"{gateway.http}/healthz", timeout=1,
                         verify=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("callgate did not become ready:\n" + gateway.log_path.read_text())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@dataclass
class SippResult:
    returncode: int
    output: str
    stats: dict[str, str]

    @property
    def successful(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", "0"))

    @property
    def failed(self) -> int:
        return int(self.stats.get("FailedCall(C)", "0"))


def sipp(gateway: Gateway, scenario: str, tmp_path: Path, *, transport: str = "u1",
         calls: int = 1, rate: float = 10, limit: int = 100, timeout: float = 60,
         extra: list[str] | None = None, service: str = PROJECT_ID,
         keys: dict[str, str] | None = None) -> SippResult:
    """Run a SIPp UAC scenario against the gateway; returns its exit code and final stats.

    ``keys`` fill a scenario's ``[name]`` fields (SIPp ``-key``); ``contact_host``, the host
    of the caller's Contact, defaults to its address."""
    binary = shutil.which("sipp")
    if binary is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester; `make test` "
                           "installs it)")
    stat_file = tmp_path / f"sipp-{scenario}-{transport}-{time.monotonic_ns()}.csv"
    cmd = [binary, f"127.0.0.1:{gateway.sip_port}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
           "-s", service, "-i", "127.0.0.1", "-p", str(free_port(both=False)),
           "-mp", str(free_port(both=False)), "-t", transport, "-m", str(calls),
           "-r", str(rate), "-l", str(limit), "-timeout", f"{int(timeout)}s",
           "-timeout_error", "-nostdin", "-trace_stat", "-stf", str(stat_file),
           "-max_recv_loops", "1000", *(extra or [])]
    for name, value in {"contact_host": "127.0.0.1", **(keys or {})}.items():
        cmd += ["-key", name, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30,
                          cwd=tmp_path)
    return SippResult(proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:],
                      _last_stats(stat_file))


def _last_stats(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = [line.rstrip(";\n").split(";") for line in path.read_text().splitlines() if line]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))
