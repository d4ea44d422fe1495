"""The diagnostic engine: the caller hears their own audio back.

It proves the whole audio path (RTP in, decode, resample, session, resample, encode, paced RTP
out) without any model, and it is what gateway-overhead benchmarks run on. It is duplex: every
frame pushed in comes back out of ``events()`` unchanged. The queue between them is bounded;
when the reader falls behind, the oldest frames are dropped so the echo delay stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from callgate.engines.base import (
    AudioDelta,
    Engine,
    EngineError,
    EngineEvent,
    ResponseDone,
    ResponseRequest,
    Stage,
    TranscriptDelta,
    TranscriptDone,
)

_CLOSED = b""


class EchoEngine(Engine):
    duplex = True

    def __init__(self, max_frames: int = 250) -> None:  # 250 frames of 20 ms = 5 s
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_frames)
        self._closed = False
        self.dropped_frames = 0

    def push_audio(self, pcm: bytes) -> None:
        if self._closed or not pcm:
            return
        self._put(pcm)

    def _put(self, pcm: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_frames += 1
        self._queue.put_nowait(pcm)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            pcm = await self._queue.get()
            if not pcm:  # _CLOSED: push_audio never queues an empty frame
                return
            yield AudioDelta(pcm)

    async def transcribe(self, pcm: bytes) -> AsyncIterator[TranscriptDelta | TranscriptDone
                                                            | Stage | EngineError]:
        yield EngineError("the echo engine does not transcribe: it only returns the caller's "
                          "audio", "not_supported")

    async def respond(self, request: ResponseRequest) -> AsyncIterator[EngineEvent]:
        yield EngineError("the echo engine does not respond: it only returns the caller's "
                          "audio", "not_supported")
        yield ResponseDone(status="failed", reason="not_supported")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._put(_CLOSED)
