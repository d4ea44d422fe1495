"""Run a real ``callgate serve`` and real SIP peers (SIPp) on loopback, bounded and cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench.common import free_port

from callgate import config
from callgate.server import Gateway as InProcessGateway
from callgate.sip.message import Request, Response, parse_message

SCENARIOS = Path(__file__).parent / "scenarios"
PROJECT_ID = "proj_test"


SDP = ("v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class ScriptedUac:
    """Just enough of a caller on a UDP socket, for exchanges SIPp cannot script (answering
    callgate's own requests mid-call): sends what it is given, hands back what arrives."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.rtp_port = free_port(both=False)

    def request(self, method: str, uri: str, cseq: int, branch: str, *, to: str,
                body: str = "", extra: str = "") -> bytes:
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch}\r\n"
                f"From: <sip:caller@127.0.0.1>;tag=uac1\r\nTo: {to}\r\n"
                f"Call-ID: glare-1@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
                f"Allow: INVITE, ACK, BYE, CANCEL\r\n{extra}{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def answer(self, request: Request, status: int, reason: str, body: str = "") -> bytes:
        vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"SIP/2.0 {status} {reason}\r\n{vias}"
                f"From: {request.headers.get('From')}\r\nTo: {request.headers.get('To')}\r\n"
                f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('CSeq')}\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port}>\r\n{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.gateway)

    async def receive(self, want: str, timeout: float = 5.0) -> Request | Response:
        """The next message whose first line contains ``want`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535),
                                             max(0.01, deadline - loop.time()))
            if want in data.split(b"\r\n", 1)[0].decode():
                return parse_message(data)


@contextlib.asynccontextmanager
async def in_process(rtp_ports: int = 200, **settings: Any) -> AsyncIterator[InProcessGateway]:
    """callgate in this process, on loopback, auto-accepting with ``echo``: for tests that
    look inside it (its tables, its timers) while real peers talk to it. Its records and
    recordings go to a temporary folder unless ``data_dir`` says otherwise."""
    with tempfile.TemporaryDirectory(prefix="callgate-data-") as data_dir:
        gateway = InProcessGateway(config.load(**{
            "sip_host": "127.0.0.1", "sip_port": free_port(), "http_host": "127.0.0.1",
            "http_port": free_port(socket.SOCK_STREAM, both=False), "project_id": PROJECT_ID,
            "rtp_ports": free_rtp_range(rtp_ports), "log_level": "warning",
            "default_session": {"type": "realtime", "model": "echo"}, "data_dir": data_dir,
            **settings}))
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
        "CALLGATE_DATA_DIR": str(tmp_path / f"data-{sip_port}"),
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
