"""Running model inference off the event loop.

Whisper, Piper and llama.cpp hold the CPU for tens to hundreds of milliseconds per call; on
the loop that would stall SIP and the 20 ms RTP pacing of every other call. They run on one
dedicated pool (not the loop's default executor, which DNS lookups and file I/O share), and
their streaming outputs come back to the loop item by item.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# More workers than cores on purpose: a stream parks a worker while the loop consumes it.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="callgate-infer")


async def run_blocking(fn: Callable[..., T], *args: Any, executor: Executor | None = None
                       ) -> T:
    """``fn(*args)`` on the inference pool (or ``executor``)."""
    return await asyncio.get_running_loop().run_in_executor(executor or _POOL, fn, *args)


async def iterate_in_thread(produce: Callable[[threading.Event], Iterator[T]], *,
                            executor: Executor | None = None) -> AsyncIterator[T]:
    """Items of ``produce(stop)`` run on the inference pool, delivered on the loop.

    Closing the async iterator sets ``stop`` and returns at once: the producer sees the flag
    at its next item (one Whisper segment, one Piper sentence, one llama.cpp token) and ends;
    whatever it yields after that is dropped. Exceptions from the producer are re-raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    stop = threading.Event()

    def deliver(kind: int, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        items = produce(stop)
        try:
            for item in items:
                if stop.is_set():
                    break
                deliver(0, item)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            deliver(1, exc)
        else:
            deliver(2, None)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    future = loop.run_in_executor(executor or _POOL, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == 0:
                yield value
            elif kind == 1:
                raise value
            else:
                return
    finally:
        stop.set()
        if future.done() and not future.cancelled():
            future.exception()  # mark retrieved; work() itself never raises


@contextlib.asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Like ``contextlib.aclosing`` for any async iterator: a nested stream stops as soon as
    its consumer does, not when the garbage collector gets to it."""
    try:
        yield items
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
