"""Where the WebSocket endpoint finds sessions: phone calls by call id, plus standalone ones.

A call's session is added when the call is accepted and removed when it ends (the call layer
does both); a standalone session (``?model=…``) lives exactly as long as its socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from callgate.engines.base import Engine
from callgate.engines.vad import VoiceActivity
from callgate.realtime.session import RealtimeSession
from callgate.realtime.session_config import SameEngine

EngineFactory = Callable[[str], Awaitable[Engine]]


class SessionRegistry:
    def __init__(self, engine_factory: EngineFactory | None = None, *,
                 vad_factory: Callable[[], VoiceActivity | None] | None = None,
                 same_engine: SameEngine | None = None) -> None:
        self.engine_factory = engine_factory
        self.vad_factory = vad_factory
        self.same_engine = same_engine
        self._calls: dict[str, RealtimeSession] = {}
        self._standalone: dict[str, RealtimeSession] = {}

    def __len__(self) -> int:
        return len(self._calls) + len(self._standalone)

    def add(self, session: RealtimeSession) -> None:
        """Register a call's session under its call id."""
        if session.call_id is None:
            raise ValueError("only a session with a call_id can be added")
        self._calls[session.call_id] = session

    def get(self, call_id: str) -> RealtimeSession | None:
        session = self._calls.get(call_id)
        return None if session is None or session.closed else session

    def remove(self, call_id: str) -> RealtimeSession | None:
        return self._calls.pop(call_id, None)

    async def create_standalone(self, model: str, *,
                                engine_factory: EngineFactory | None = None,
                                config: dict[str, Any] | None = None) -> RealtimeSession:
        """A started session with no phone call: its audio travels over the socket."""
        factory = engine_factory or self.engine_factory
        if factory is None:
            raise RuntimeError("no engine factory configured for standalone sessions")
        engine = await factory(model)
        try:
            session = RealtimeSession(config={"type": "realtime", **(config or {}),
                                              "model": model},
                                      engine=engine, same_engine=self.same_engine,
                                      vad=self.vad_factory() if self.vad_factory else None)
            await session.start()
        except BaseException:
            await engine.aclose()
            raise
        self._standalone[session.session_id] = session
        return session

    async def close_standalone(self, session: RealtimeSession, reason: str) -> None:
        self._standalone.pop(session.session_id, None)
        await session.close(reason)

    async def close_all(self, reason: str = "gateway shutting down") -> None:
        sessions = [*self._calls.values(), *self._standalone.values()]
        self._calls.clear()
        self._standalone.clear()
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)
