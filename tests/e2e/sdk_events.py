"""Every server event of one ``openai`` SDK realtime connection, for live-call tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.realtime.doubles import check_server_event

WAIT = 20.0  # bound on each step (2 shared cores: model loads and STT can take seconds)


class Events:
    """Every server event of one SDK connection, in arrival order, each checked against the
    SDK's own models."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.items: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()
        self.closed: BaseException | None = None

    async def pump(self) -> None:
        try:
            while True:
                raw = await self.connection.recv_bytes()
                ev = json.loads(raw)
                check_server_event(ev)
                self.items.append(ev)
                self.times.append(time.monotonic())
                self._changed.set()
        except BaseException as exc:
            self.closed = exc
            self._changed.set()
            raise

    def save(self, path: Path) -> None:
        """Every event with its arrival time, for reading after a failure."""
        start = self.times[0] if self.times else 0.0
        path.write_text("".join(json.dumps({"t": round(t - start, 3), **ev}) + "\n"
                                for t, ev in zip(self.times, self.items, strict=True)))

    def types(self, since: int = 0) -> list[str]:
        return [ev["type"] for ev in self.items[since:]]

    def find(self, kind: str, since: int = 0,
             where: Callable[[dict[str, Any]], bool] = lambda ev: True) -> int | None:
        for index in range(since, len(self.items)):
            ev = self.items[index]
            if ev["type"] == kind and where(ev):
                return index
        return None

    async def wait(self, kind: str, since: int = 0, *, timeout: float = WAIT,
                   where: Callable[[dict[str, Any]], bool] = lambda ev: True,
                   why: str = "") -> int:
        """Index of the first ``kind`` event at or after ``since`` matching ``where``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(kind, since, where)
            if found is not None:
                return found
            if self.closed is not None:
                raise AssertionError(f"socket closed ({self.closed!r}) before {kind} {why}; "
                                     f"events since #{since}: {self.types(since)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} within {timeout:g}s {why}; "
                                     f"events since #{since}: {self.types(since)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
