"""An inference worker process: ``python -m callgate.engines.worker --fd N --stage NAME``.

The gateway starts one per stage (STT, LLM, TTS) with :mod:`callgate.engines.supervisor` and
talks to it over the socket ``--fd`` (:mod:`callgate.engines.ipc`). Native model code
(CTranslate2, llama.cpp, onnxruntime under Piper) runs only here: a fault in it ends this
process and the turn it was serving, never the gateway, and its threads never hold the GIL
that the gateway's RTP tick needs.

A request names a job, ``module:function``, with the signature of
:data:`Job`: a blocking generator over plain picklable values that checks ``stop`` between
items. Models are cached by the job modules themselves, so they load once per process.
Requests run on a pool of ``--concurrency`` threads (1 for llama.cpp, whose context serves
one generation at a time); a cancelled request stops at its next item.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from callgate import log
from callgate.engines import ipc

Job = Callable[[dict[str, Any], threading.Event], Iterator[Any]]

logger = logging.getLogger("callgate.worker")
WORKER_NICENESS = 5


def job_name(job: Job) -> str:
    return f"{job.__module__}:{job.__qualname__}"


def resolve(name: str) -> Job:
    module, _, function = name.partition(":")
    if not function.isidentifier():
        raise ValueError(f"not a job: {name!r}")
    job: Job = getattr(importlib.import_module(module), function)
    return job


class _Server:
    def __init__(self, sock: socket.socket, concurrency: int) -> None:
        self.sock = sock
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
        self.stops: dict[int, threading.Event] = {}
        self.send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        data = ipc.encode(message)
        with self.send_lock:
            self.sock.sendall(data)

    def run(self, request: int, name: str, args: dict[str, Any], stop: threading.Event) -> None:
        try:
            for item in resolve(name)(args, stop):
                if stop.is_set():
                    break
                self.send((ipc.ITEM, request, item))
        except Exception as exc:
            self.send((ipc.FAILED, request, _portable(exc)))
        else:
            self.send((ipc.END, request))
        finally:
            self.stops.pop(request, None)

    def serve(self) -> None:
        self.send((ipc.READY, os.getpid()))
        stream = self.sock.makefile("rb")
        while (message := ipc.read_message_blocking(stream)) is not None:
            if message[0] == ipc.RUN:
                _, request, name, args = message
                stop = self.stops[request] = threading.Event()
                self.pool.submit(self.run, request, name, args, stop)
            elif message[0] == ipc.CANCEL and (cancelled := self.stops.get(message[1])):
                cancelled.set()


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (callgate's own errors keep their type), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _die_with_parent() -> None:
    # If the gateway is killed outright, its workers must not live on holding models and
    # cores: Linux sends them SIGKILL when it goes (PR_SET_PDEATHSIG = 1).
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _leave_the_gateways_cores() -> None:
    """A gateway pinned to some cores (taskset, systemd's CPUAffinity: one process per core)
    keeps them for its RTP tick: its workers, which inherit the pinning, move to the others.
    An unpinned gateway's workers stay unpinned."""
    try:
        pinned = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - pinned
        if others:
            os.sched_setaffinity(0, others)
    except OSError:  # a cpuset that does not have those cores: stay where we are
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callgate-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    if args.parent and os.getppid() != args.parent:
        return 0  # the gateway went before the death signal was armed
    # On a busy core the kernel should run the gateway's 20 ms RTP tick before a model's next
    # matrix: a late packet is heard on every call, a turn a few ms later is not.
    os.nice(WORKER_NICENESS)
    _leave_the_gateways_cores()
    log.setup(os.environ.get("CALLGATE_LOG_LEVEL", "info"),
              os.environ.get("CALLGATE_LOG_FORMAT", "text"))
    # SIGINT goes to the whole process group on Ctrl-C: the gateway decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        _Server(sock, args.concurrency).serve()
    except (BrokenPipeError, ConnectionError, ipc.BrokenPipeline) as exc:
        log.event(logger, "worker.pipe_closed", logging.WARNING, stage=args.stage, error=str(exc))
    # The gateway closed the pipe: nothing is waiting for results any more. Leave at once,
    # without joining job threads stuck in native code.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
