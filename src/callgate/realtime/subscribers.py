"""Fan-out of server events to everyone watching a session.

Each subscriber (one per WebSocket) has its own bounded queue. A client that reads too slowly
is cut off (its subscription ends with ``overflowed`` set) rather than slowing the session or
the phone call down: the session never waits for a socket.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_QUEUED_EVENTS = 4096


class Subscription:
    """An async iterator of server events (dicts); it ends when the session closes."""

    def __init__(self, on_close: Callable[[Subscription], None],
                 maxsize: int = MAX_QUEUED_EVENTS) -> None:
        self._events: deque[dict[str, Any]] = deque()
        self._maxsize = maxsize
        self._on_close = on_close
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.overflowed = False

    def put(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        if len(self._events) >= self._maxsize:
            self.overflowed = True
            self._events.clear()
            self.close()
            return
        self._events.append(event)
        self._wake()

    def close(self) -> None:
        """Stop receiving; what is queued can still be read, then iteration ends."""
        if not self.closed:
            self.closed = True
            self._on_close(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> dict[str, Any] | None:
        """The next queued event, or None if none is queued right now."""
        return self._events.popleft() if self._events else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._events:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()
