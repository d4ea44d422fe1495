"""Blocking work off the event loop, and closing nested streams promptly.

Model inference runs in worker processes (:mod:`callgate.engines.supervisor`); what little
blocking work stays in the gateway (loading the Silero VAD model at start, creating a call's
noise suppressor) runs on one dedicated pool rather than the loop's default executor, which
DNS lookups and file I/O share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="callgate-blocking")


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the pool for blocking work."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


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
