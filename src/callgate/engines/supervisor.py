"""Inference worker processes, started and supervised by the gateway.

The gateway runs no model inference (DESIGN.md, "Processes"): each stage of the local
pipeline (``stt``, ``llm``, ``tts``) has one :class:`WorkerProcess`, a child running
:mod:`callgate.engines.worker`. A stage object asks its worker to ``iterate`` a job and gets
the job's items back on the event loop, as it once got them from a thread.

When a worker dies (a signal, the OOM killer, an exit), every request it was serving fails
with :class:`WorkerCrashed`, which names the stage: that is one failed turn. The worker is
started again after a back-off that doubles with each crash in ``crash_window_s``, and the
jobs it had preloaded (model loads) run again before it takes requests, so the next turn
finds the model warm. ``crash_limit`` crashes within the window mark the stage unavailable
(logged once, ``worker.crash_loop``); new sessions that need it are refused until a restarted
worker has lived a whole window (``worker.recovered``). Closing the supervisor closes the
pipe, which ends the worker; a gateway killed outright takes its workers with it
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from callgate.engines import ipc
from callgate.engines.worker import Job, job_name
from callgate.log import event

logger = logging.getLogger(__name__)

# llama.cpp's context serves one generation at a time; Whisper and Piper take a few at once.
STAGE_CONCURRENCY = {"llm": 1}
DEFAULT_CONCURRENCY = 4


class WorkerCrashed(Exception):
    """The worker serving this request died; ``stage`` says which one."""

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"the {stage} worker {detail}")
        self.stage = stage


class WorkerUnavailable(WorkerCrashed):
    """The stage's worker could not be started, or is crash-looping."""


_Reply = tuple[str, Any]


class WorkerProcess:
    """One supervised worker process for one stage; started on first use."""

    def __init__(self, stage: str, *, concurrency: int = DEFAULT_CONCURRENCY,
                 crash_limit: int = 3, crash_window_s: float = 60.0, backoff_s: float = 0.2,
                 max_backoff_s: float = 10.0, start_timeout_s: float = 60.0,
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.stage = stage
        self.on_exit = on_exit
        self.concurrency = concurrency
        self.crash_limit = crash_limit
        self.crash_window_s = crash_window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Queue[_Reply]] = {}
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._preloads: list[tuple[str, dict[str, Any]]] = []
        self._crashes: deque[float] = deque()
        self._looping = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def available(self) -> bool:
        return not self._looping and not self._closed

    async def iterate(self, job: Job, args: dict[str, Any]) -> AsyncIterator[Any]:
        """The items of ``job(args, stop)`` run in the worker; closing this iterator cancels
        the job. Raises :class:`WorkerCrashed` if the worker dies meanwhile, and re-raises
        the job's own exception if it fails."""
        await self._wait_ready()
        async for item in self._request(job_name(job), args):
            yield item

    async def call(self, job: Job, args: dict[str, Any]) -> list[Any]:
        return [item async for item in self.iterate(job, args)]

    async def preload(self, job: Job, args: dict[str, Any]) -> None:
        """Run ``job`` now and again in every restarted worker before it takes requests."""
        entry = (job_name(job), args)
        if entry not in self._preloads:
            self._preloads.append(entry)
        await self.call(job, args)

    async def aclose(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
        proc, writer = self._proc, self._writer
        if writer is not None:
            writer.close()  # the worker reads end-of-stream and leaves
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in list(self._readers):
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_pending(WorkerUnavailable(self.stage, "was stopped"))

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit, an abandoned event loop)."""
        self._closed = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    # --- starting -------------------------------------------------------------------------

    async def _wait_ready(self) -> None:
        if self._closed:
            raise WorkerUnavailable(self.stage, "was stopped")
        if self._ready.is_set():
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(delay=0.0))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.start_timeout_s)
        except TimeoutError:
            raise WorkerUnavailable(self.stage, f"did not start within "
                                                f"{self.start_timeout_s:.0f} s") from None

    async def _start(self, delay: float) -> None:
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                return
            except WorkerCrashed:
                pass  # counted by _exited, which saw it go
            except (OSError, TimeoutError, ipc.BrokenPipeline) as exc:
                event(logger, "worker.start_failed", logging.ERROR, stage=self.stage,
                      error=str(exc) or type(exc).__name__)
                self._crashes.append(time.monotonic())
            delay = self._backoff()

    async def _spawn(self) -> None:
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "callgate.engines.worker", "--fd", str(child.fileno()),
                "--stage", self.stage, "--concurrency", str(self.concurrency),
                "--parent", str(os.getpid()), pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        try:
            hello = await asyncio.wait_for(ipc.read_message(reader), self.start_timeout_s)
        except BaseException:
            proc.kill()
            writer.close()
            raise
        if hello is None or hello[0] != ipc.READY:
            proc.kill()
            writer.close()
            raise ipc.BrokenPipeline(f"worker {proc.pid} did not say it was ready")
        self._proc, self._writer = proc, writer
        task = asyncio.create_task(self._read(proc, reader, writer))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        started = time.monotonic()
        for name, args in list(self._preloads):
            try:
                async for _ in self._request(name, args):
                    pass
            except WorkerCrashed:
                raise
            except Exception as exc:  # the turn that needs it will say so
                event(logger, "worker.preload_failed", logging.WARNING, stage=self.stage,
                      job=name, error=str(exc))
        event(logger, "worker.ready", stage=self.stage, pid=proc.pid,
              restarts=self.restarts, preloads=len(self._preloads),
              ms=round((time.monotonic() - started) * 1000))
        self._ready.set()
        if self._looping:
            asyncio.get_running_loop().call_later(self.crash_window_s, self._recovered, proc)

    def _recovered(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc and proc.returncode is None and self._looping:
            self._looping = False
            self._crashes.clear()
            event(logger, "worker.recovered", stage=self.stage, pid=proc.pid)

    def _backoff(self) -> float:
        return float(min(self.max_backoff_s,
                         self.backoff_s * 2 ** max(0, len(self._crashes) - 1)))

    # --- requests and replies -------------------------------------------------------------

    async def _request(self, name: str, args: dict[str, Any]) -> AsyncIterator[Any]:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise WorkerCrashed(self.stage, "is not running")
        request = next(self._ids)
        replies: asyncio.Queue[_Reply] = asyncio.Queue()
        self._pending[request] = replies
        writer.write(ipc.encode((ipc.RUN, request, name, args)))
        finished = False
        try:
            while True:
                kind, value = await replies.get()
                if kind == ipc.ITEM:
                    yield value
                    continue
                finished = True
                if kind == ipc.FAILED:
                    raise value
                return
        finally:
            self._pending.pop(request, None)
            if not finished and not writer.is_closing():
                writer.write(ipc.encode((ipc.CANCEL, request)))

    async def _read(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        try:
            while (message := await ipc.read_message(reader)) is not None:
                replies = self._pending.get(message[1])
                if replies is None:
                    continue  # a cancelled request's last items
                if message[0] == ipc.ITEM:
                    replies.put_nowait((ipc.ITEM, message[2]))
                elif message[0] == ipc.END:
                    replies.put_nowait((ipc.END, None))
                elif message[0] == ipc.FAILED:
                    replies.put_nowait((ipc.FAILED, message[2]))
        except ipc.BrokenPipeline as exc:
            event(logger, "worker.protocol_error", logging.ERROR, stage=self.stage,
                  pid=proc.pid, error=str(exc))
            proc.kill()
        except asyncio.CancelledError:
            self._closed = True  # the event loop is going away: the worker goes with it
            raise
        finally:
            writer.close()
            code = await proc.wait()
            self._exited(proc, code)

    def _exited(self, proc: asyncio.subprocess.Process, code: int) -> None:
        if self._proc is proc:
            self._proc, self._writer = None, None
            self._ready.clear()
        detail = (f"was killed by {signal.Signals(-code).name}" if code < 0
                  else f"exited with status {code}")
        failed = self._fail_pending(WorkerCrashed(self.stage, f"{detail} (pid {proc.pid}); "
                                                              "it is being restarted"))
        if self._closed:
            return
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self.crash_window_s:
            self._crashes.popleft()
        self.restarts += 1
        event(logger, "worker.exited", logging.WARNING, stage=self.stage, pid=proc.pid,
              detail=detail, failed_requests=failed)
        if self.on_exit is not None:
            self.on_exit(self.stage)
        if len(self._crashes) >= self.crash_limit and not self._looping:
            self._looping = True
            event(logger, "worker.crash_loop", logging.ERROR, stage=self.stage,
                  crashes=len(self._crashes), window_s=self.crash_window_s,
                  detail="new sessions that need this stage are refused until it recovers")
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(delay=self._backoff()))

    def _fail_pending(self, error: Exception) -> int:
        pending = list(self._pending.values())
        self._pending.clear()
        for replies in pending:
            replies.put_nowait((ipc.FAILED, error))
        return len(pending)


class Workers:
    """The worker processes of one event loop, one per stage. ``on_exit(stage)`` is told of
    every worker that died unasked (the gateway counts them in its metrics)."""

    def __init__(self) -> None:
        self._stages: dict[str, WorkerProcess] = {}
        self.on_exit: Callable[[str], None] | None = None

    def stage(self, name: str) -> WorkerProcess:
        if name not in self._stages:
            self._stages[name] = WorkerProcess(
                name, concurrency=STAGE_CONCURRENCY.get(name, DEFAULT_CONCURRENCY),
                on_exit=self._exited)
        return self._stages[name]

    def _exited(self, stage: str) -> None:
        if self.on_exit is not None:
            self.on_exit(stage)

    def started(self) -> dict[str, WorkerProcess]:
        return dict(self._stages)

    async def aclose(self) -> None:
        await asyncio.gather(*(worker.aclose() for worker in self._stages.values()))
        self._stages.clear()

    def kill_now(self) -> None:
        for worker in self._stages.values():
            worker.kill_now()


_current: tuple[asyncio.AbstractEventLoop, Workers] | None = None


def workers() -> Workers:
    """The running event loop's workers. A worker belongs to the loop that started it; a new
    loop (each ``asyncio.run``) gets new ones, and those of an abandoned loop are killed."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current[0] is not loop:
        if _current is not None:
            _current[1].kill_now()
        _current = (loop, Workers())
    return _current[1]


async def close_workers() -> None:
    global _current
    if _current is not None and _current[0] is asyncio.get_running_loop():
        current, _current = _current[1], None
        await current.aclose()


@atexit.register
def _kill_at_exit() -> None:
    if _current is not None:
        _current[1].kill_now()
