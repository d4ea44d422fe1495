"""The diagnostic engine: the caller hears their own audio back.

It proves the audio path (RTP in, jitter buffer, session, paced RTP out) without any model, and
it is what gateway-overhead benchmarks run on. It is duplex and takes a call's audio in the
codec's own format (``line_audio``): G.711 comes back bit for bit, nothing is decoded or
resampled, and every frame pushed in is handed straight back to the session (``attach``), so
it leaves in the packet of the tick that played it out. Without a session attached (a reader
of ``events()``) frames wait in a bounded queue; when the reader falls behind, the oldest are
dropped so the echo delay stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

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
from callgate.media.formats import AudioFormat

_CLOSED = b""


class EchoEngine(Engine):
    duplex = True
    inline = True

    def __init__(self, max_frames: int = 250) -> None:  # 250 frames of 20 ms = 5 s
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_frames)
        self._closed = False
        self._deliver: Callable[[EngineEvent], None] | None = None
        self._line: AudioFormat | None = None
        self.dropped_frames = 0

    def line_audio(self, codec: AudioFormat) -> AudioFormat:
        # The first codec decides for the call: if a re-INVITE brings another, the stream
        # converts it to the format the call started with, so the session counts one rate.
        if self._line is None:
            self._line = codec
        if codec == self._line:
            return codec
        return AudioFormat.pcm(self._line.rate)

    def attach(self, deliver: Callable[[EngineEvent], None]) -> None:
        self._deliver = deliver

    def push_audio(self, pcm: bytes) -> None:
        if self._closed or not pcm:
            return
        if self._deliver is not None:
            self._deliver(AudioDelta(pcm))
        else:
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
