"""A session's noise reduction (``audio.input.noise_reduction``): the suppressor on its
caller's audio, created off the event loop.

Creating a DeepFilterNet state blocks for about a quarter of a second (engines/denoise.py); on
the loop that would stall every call of the process, so it is made on the gateway's pool for
blocking work and put in place when it is ready, the caller's audio passing unchanged until
then. A mode asked for while it loads is the one it starts with; null drops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from callgate.engines.denoise import NoiseSuppressor
from callgate.engines.threads import run_blocking
from callgate.log import event

logger = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class NoiseReduction:
    def __init__(self, spawn: Spawn, log_fields: dict[str, Any]) -> None:
        self._spawn = spawn
        self._log = log_fields
        self._wanted: str | None = None  # the mode the session asks for now
        self._suppressor: NoiseSuppressor | None = None
        self._loading = False

    @property
    def active(self) -> bool:
        """A suppressor is running on the caller's audio."""
        return self._suppressor is not None

    def configure(self, mode: str | None) -> None:
        """Suppress in ``mode`` (None: off), keeping a running suppressor's filter state."""
        self._wanted = mode
        if mode is None:
            if self._suppressor is not None:
                self._suppressor.close()
                self._suppressor = None
        elif self._suppressor is not None:
            self._suppressor.mode = mode
        elif not self._loading:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no event loop to hold up: create it here
                self._install(self._create(mode))
                return
            self._loading = True
            self._spawn(self._load(mode))

    def process(self, pcm: bytes) -> bytes:
        """One frame of caller audio, suppressed if a suppressor is running."""
        return pcm if self._suppressor is None else self._suppressor.process(pcm)

    def close(self) -> None:
        self.configure(None)

    def _create(self, mode: str) -> NoiseSuppressor | None:
        try:
            return NoiseSuppressor(mode)
        except Exception as exc:
            event(logger, "noise_reduction_unavailable", logging.WARNING, **self._log,
                  error=str(exc))
            return None

    async def _load(self, mode: str) -> None:
        try:
            suppressor = await run_blocking(self._create, mode)
        finally:
            self._loading = False
        self._install(suppressor)

    def _install(self, suppressor: NoiseSuppressor | None) -> None:
        if suppressor is None:
            return
        mode = self._wanted  # the client may have changed it, or the session ended
        if mode is None or self._suppressor is not None:
            suppressor.close()
            return
        suppressor.mode = mode
        self._suppressor = suppressor
        event(logger, "noise_reduction_started", **self._log, mode=mode)
