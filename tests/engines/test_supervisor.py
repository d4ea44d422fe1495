"""Supervised inference workers: real child processes, real signals."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from callgate.engines.supervisor import WorkerCrashed, WorkerProcess, WorkerUnavailable
from tests.engines import worker_jobs as jobs

T = TypeVar("T")


def run(test: Callable[[WorkerProcess], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        worker = WorkerProcess("test", **{"concurrency": 2, "backoff_s": 0.05, **options})
        try:
            return await asyncio.wait_for(test(worker), 60)
        finally:
            await worker.aclose()

    return asyncio.run(main())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_job_runs_in_another_process_and_streams_its_items() -> None:
    async def test(worker: WorkerProcess) -> tuple[list[Any], list[Any]]:
        return await worker.call(jobs.count, {"n": 5}), await worker.call(jobs.whoami, {})

    items, (pid,) = run(test)
    assert items == [0, 1, 2, 3, 4]
    assert pid != os.getpid()


def test_a_failing_job_raises_its_own_exception_and_the_worker_lives_on() -> None:
    async def test(worker: WorkerProcess) -> tuple[int, int]:
        (before,) = await worker.call(jobs.whoami, {})
        with pytest.raises(LookupError, match="no such thing: x"):
            await worker.call(jobs.refuse, {"what": "x"})
        (after,) = await worker.call(jobs.whoami, {})
        return before, after

    before, after = run(test)
    assert before == after


def test_closing_the_stream_cancels_the_job() -> None:
    async def test(worker: WorkerProcess) -> list[Any]:
        stream = worker.iterate(jobs.until_stopped, {})
        assert await anext(stream) == "started"
        await stream.aclose()
        # One thread: the next job runs only once the cancelled one has let go of it.
        return await worker.call(jobs.count, {"n": 2})

    assert run(test, concurrency=1) == [0, 1]


@pytest.mark.parametrize("signal", [jobs.SIGKILL, jobs.SIGSEGV])
def test_a_crash_fails_the_request_it_served_and_a_restarted_worker_takes_the_next(
        signal: int, caplog: pytest.LogCaptureFixture) -> None:
    async def test(worker: WorkerProcess) -> tuple[int, int, list[Any]]:
        await worker.preload(jobs.remember, {"what": "model"})
        (first,) = await worker.call(jobs.whoami, {})
        seen: list[Any] = []
        with pytest.raises(WorkerCrashed) as crash:
            async for item in worker.iterate(jobs.die, {"signal": signal}):
                seen.append(item)
        assert seen == [1]
        assert crash.value.stage == "test"
        assert "was killed by SIG" in str(crash.value)
        (second,) = await worker.call(jobs.whoami, {})
        (remembered,) = await worker.call(jobs.recall, {})
        return first, second, [remembered, worker.restarts]

    with caplog.at_level(logging.INFO, logger="callgate.engines.supervisor"):
        first, second, (remembered, restarts) = run(test)
    assert first != second
    assert not alive(first)
    assert remembered == ["model"]  # the preload ran again in the new process
    assert restarts == 1
    assert [r.getMessage() for r in caplog.records].count("worker.exited") == 1


def test_a_crash_loop_marks_the_stage_unavailable_once(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    async def test(worker: WorkerProcess) -> bool:
        for _ in range(3):
            with pytest.raises(WorkerCrashed):
                await worker.call(jobs.die, {"signal": jobs.SIGKILL})
        return worker.available

    with caplog.at_level(logging.INFO, logger="callgate.engines.supervisor"):
        available = run(test, crash_limit=2)
    assert available is False
    assert [r.getMessage() for r in caplog.records].count("worker.crash_loop") == 1


def test_a_crash_looping_worker_recovers_after_a_quiet_window() -> None:
    async def test(worker: WorkerProcess) -> tuple[bool, bool]:
        for _ in range(2):
            with pytest.raises(WorkerCrashed):
                await worker.call(jobs.die, {"signal": jobs.SIGKILL})
        looping = worker.available
        await worker.call(jobs.count, {"n": 1})  # restarted and ready
        deadline = time.monotonic() + 10
        while not worker.available and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return looping, worker.available

    assert run(test, crash_limit=2, crash_window_s=0.5) == (False, True)


def test_closing_ends_the_worker_and_refuses_new_work() -> None:
    async def main() -> int:
        worker = WorkerProcess("test")
        (pid,) = await worker.call(jobs.whoami, {})
        await worker.aclose()
        with pytest.raises(WorkerUnavailable):
            await worker.call(jobs.whoami, {})
        return int(pid)

    pid = asyncio.run(main())
    assert not alive(pid)


def test_a_gateway_killed_outright_takes_its_workers_with_it() -> None:
    script = (
        "import asyncio, sys\n"
        "from callgate.engines.supervisor import WorkerProcess\n"
        "from tests.engines import worker_jobs as jobs\n"
        "async def main():\n"
        "    worker = WorkerProcess('test')\n"
        "    (pid,) = await worker.call(jobs.whoami, {})\n"
        "    print(pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert alive(worker_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker_pid)
