"""What every benchmark shares: the machine it ran on, percentiles, the results file, CPU
pinning, and a ``callgate serve`` subprocess that is always cleaned up.

A benchmark on a shared 2-core box is only worth its numbers when the file that holds them also
says what else was running: every results file records the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PROJECT_ID = "proj_bench"
# RTP ports for the gateway under test: above the range the e2e tests pick from (20000-40000),
# so a benchmark and a test run side by side rarely meet (the pool skips a held port anyway).
RTP_PORTS = "40000-49998"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Niceness for every process a benchmark starts (and itself), from --nice: on a machine shared
# with other work, a negative value keeps others from taking the measured cores (root only).
_nice: int | None = None
_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the machine ---------------------------------------------------------------------------------

def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The facts a reader needs to judge a number: CPU, cores, Python, loop, load."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": _version("uvloop"),
        "callgate": _version("callgate"),
        "commit": _git_commit(),
        "load_average": load_average(),
        "nice": _nice,
    }


# -- statistics ----------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """n, p50/p95/p99, mean and max of ``values`` (None for an empty series, so the JSON
    stays valid)."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {"n": len(values),
            "p50": round(percentile(values, 50), digits),
            "p95": round(percentile(values, 95), digits),
            "p99": round(percentile(values, 99), digits),
            "mean": round(sum(values) / len(values), digits),
            "max": round(max(values), digits)}


# -- command line and results --------------------------------------------------------------------

def arg_parser(name: str, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument("--quick", action="store_true",
                        help="seconds, tiny N: proves the benchmark runs (the smoke test)")
    parser.add_argument("--nice", type=int, default=None,
                        help="run the gateway, peers and load generators at this niceness "
                             "(e.g. -10 as root on a shared machine; recorded in the results)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results file (default bench/results/{name}.json; a --quick run "
                             "writes to the temporary folder so it never replaces real results)")
    return parser


def results_path(name: str, quick: bool, out: Path | None) -> Path:
    if out is not None:
        return out
    if quick:
        return Path(tempfile.gettempdir()) / "callgate-bench" / f"{name}.json"
    return RESULTS_DIR / f"{name}.json"


def write_results(path: Path, name: str, *, quick: bool, started: float,
                  machine: dict[str, Any], results: dict[str, Any]) -> Path:
    doc = {
        "benchmark": name,
        "quick": quick,
        "command": " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "load_average_after": load_average(),
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    print(f"results: {path}", flush=True)
    return path


# -- processes -----------------------------------------------------------------------------------

def cpu_plan() -> tuple[int | None, int | None]:
    """(core for the system under test, core for the load generator): the first two usable
    cores, or no pinning when the process may run on only one (reported as null)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return None, None
    return cores[0], cores[1]


def set_nice(value: int | None) -> None:
    """Apply ``--nice`` to this process and remember it for the processes it starts."""
    global _nice
    _nice = value
    if value is not None:
        os.setpriority(os.PRIO_PROCESS, 0, value)


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    prefix = ["nice", "-n", str(_nice)] if _nice is not None else []
    return [*prefix, *(["taskset", "-c", str(cpu)] if cpu is not None else []), *cmd]


def spawn(cmd: Sequence[str], *, cpu: int | None = None, log: Path | None = None,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a process group of its own (so :func:`stop` reaches its children)."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(pinned(cmd, cpu), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it outlives ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers in the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat): on a
    shared machine this is how much of a measurement other processes took from the target."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def group_runqueue_wait_seconds(pgid: int) -> float:
    total = 0.0
    for pid in _group(pgid):
        with contextlib.suppress(OSError):
            total += runqueue_wait_seconds(pid)
    return total


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in a process group (a forking server such as
    Kamailio)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(kind: int = socket.SOCK_DGRAM, both: bool = True) -> int:
    """A port free on 127.0.0.1 (for UDP and TCP when ``both``: SIP listens on both).

    Picked at random below the kernel's ephemeral range and above callgate's default RTP range:
    a port the kernel handed out and took back could be handed to some process's outgoing
    connection before the caller binds it, and then the bind fails with EADDRINUSE.
    """
    low, high = 20002, _ephemeral_range()[0] - 1
    if high - low < 1000:
        low, high = 1024, 9999
    for _ in range(200):
        port = random.randint(low, high)
        kinds = (kind, socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM)
        try:
            for k in kinds[: 2 if both else 1]:
                with socket.socket(socket.AF_INET, k) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def need(command: str, package: str) -> str | None:
    """The path of ``command``, or None after telling the user how to install it."""
    path = shutil.which(command)
    if path is None:
        print(f"{command} is not installed: `apt-get install {package}` (skipping the part "
              "that needs it)", file=sys.stderr, flush=True)
    return path


# -- the gateway under test ----------------------------------------------------------------------

@dataclass
class Callgate:
    process: subprocess.Popen[bytes]
    sip_port: int
    http_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    cores = 1  # what one gateway process can use: its CPU percent saturates at 100

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def runqueue_wait_seconds(self) -> float:
        return runqueue_wait_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


class Measured(Protocol):
    """What the load benchmarks measure: one gateway process, or several nodes behind a
    proxy (``sip_port`` is where calls go; CPU and memory are summed over ``cores`` worth of
    processes)."""

    sip_port: int
    http_port: int
    cores: int

    @property
    def pid(self) -> int: ...  # the process a profiler samples

    def cpu_seconds(self) -> float: ...

    def runqueue_wait_seconds(self) -> float: ...

    def rss_bytes(self) -> int: ...


@contextlib.contextmanager
def callgate(workdir: Path, *, cpu: int | None, **settings: str) -> Iterator[Callgate]:
    """``callgate serve`` (uvloop, as users run it) on loopback, optionally pinned to ``cpu``;
    ``settings`` become ``CALLGATE_*`` variables over the benchmark defaults."""
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM, both=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env.update({
        "CALLGATE_SIP_HOST": "127.0.0.1", "CALLGATE_SIP_PORT": str(sip_port),
        "CALLGATE_HTTP_HOST": "127.0.0.1", "CALLGATE_HTTP_PORT": str(http_port),
        "CALLGATE_PROJECT_ID": PROJECT_ID, "CALLGATE_RTP_PORTS": RTP_PORTS,
        "CALLGATE_MAX_CALLS": "5000",
        "CALLGATE_DEFAULT_SESSION": json.dumps({"type": "realtime", "model": "echo"}),
        # Every call of a benchmark comes from this one host, at rates a per-source limit
        # exists to stop: measure the gateway, not its flood protection.
        "CALLGATE_SIP_INVITE_RATE": "0", "CALLGATE_SIP_PROBE_RATE": "0",
        "CALLGATE_DATA_DIR": str(workdir / "data"),
    })
    env.update({f"CALLGATE_{k.upper()}": v for k, v in settings.items()})
    log_path = workdir / f"callgate-{sip_port}.log"
    process = spawn([sys.executable, "-m", "callgate.cli", "serve"], cpu=cpu, log=log_path,
                    env=env)
    gateway = Callgate(process, sip_port, http_port, log_path)
    try:
        _wait_ready(gateway)
        yield gateway
    finally:
        stop(process, timeout=20)


def _wait_ready(gateway: Callgate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError("callgate exited:\n" + gateway.log_path.read_text()[-4000:])
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{gateway.http}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("callgate did not become ready:\n" + gateway.log_path.read_text()[-4000:])


# -- profiles ------------------------------------------------------------------------------------

def py_spy() -> str | None:
    """py-spy from PATH or beside this interpreter (``pip install py-spy``)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pid: int, out: Path, *, enabled: bool, cpu: int | None,
             rate: int = 200) -> Iterator[dict[str, Any]]:
    """Sample ``pid`` with py-spy (non-blocking: the target is never paused) while the block
    runs; afterwards the dict holds the top functions by own and by inclusive time."""
    summary: dict[str, Any] = {}
    binary = py_spy() if enabled else None
    if binary is None:
        yield summary
        return
    process = spawn([binary, "record", "--pid", str(pid), "--nonblocking", "--threads",
                     "--rate", str(rate), "--format", "raw", "--output", str(out)],
                    cpu=cpu, log=out.with_suffix(".log"))
    try:
        yield summary
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        stop(process)
        if out.exists():
            summary.update(profile_summary(out))


def profile_summary(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: share of samples per function, own and inclusive."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[list[Any]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / total, 1)] for name, n in best]

    return {"samples": total, "top_own_percent": ranked(own),
            "top_inclusive_percent": ranked(inclusive)}
