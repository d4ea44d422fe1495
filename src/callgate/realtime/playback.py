"""Assistant audio on the phone line: what was handed over, when it drained, what was heard.

The line (``AudioOutput``) paces audio out in real time, so a response can be finished long
before the caller has heard it. This keeps, per content part, how much audio was handed over;
when the line drains it says ``output_audio_buffer.stopped``; when it is cleared (barge-in or
``output_audio_buffer.clear``) it works out from the milliseconds dropped how much of each part
was actually played, truncates those items and says ``output_audio_buffer.cleared`` and
``conversation.item.truncated``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from callgate.realtime.items import Conversation
from callgate.realtime.responses import AudioOutput, Emit, Playback


def heard(parts: list[Playback], dropped_ms: int) -> list[tuple[Playback, int]]:
    """When the line drops ``dropped_ms`` of queued audio: each part cut short, oldest first,
    with the milliseconds of it the caller did hear."""
    cuts: list[tuple[Playback, int]] = []
    for pb in reversed(parts):  # the newest audio is the part still queued
        cut = min(pb.sent_ms, dropped_ms)
        dropped_ms -= cut
        if cut > 0:
            cuts.append((pb, pb.sent_ms - cut))
    cuts.reverse()
    return cuts


class LinePlayback:
    def __init__(self, output: AudioOutput, conversation: Conversation, emit: Emit,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
                 on_quiet: Callable[[], None]) -> None:
        self.output = output
        self.parts: list[Playback] = []
        self._conversation = conversation
        self._emit = emit
        self._spawn = spawn
        self._on_quiet = on_quiet
        self._drain_task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self.parts)

    def adopt(self, parts: list[Playback]) -> None:
        """Take over a response's parts (when it ends, or when it is interrupted)."""
        self.parts.extend(pb for pb in parts if pb.sent_bytes)
        parts.clear()

    def watch_drain(self) -> None:
        """Once the line has played everything out, emit ``output_audio_buffer.stopped``."""
        self.stop_watching()
        if self.parts:
            self._drain_task = self._spawn(self._drain())
        else:
            self._on_quiet()

    def stop_watching(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None

    async def _drain(self) -> None:
        while (queued := self.output.queued_ms()) > 0:
            await asyncio.sleep(max(queued, 20) / 1000)
        self._drain_task = None
        for response_id in dict.fromkeys(pb.response_id for pb in self.parts):
            self._emit({"type": "output_audio_buffer.stopped", "response_id": response_id})
        self.parts.clear()
        self._on_quiet()

    def clear(self) -> None:
        """Drop what is queued and truncate each item to what the caller heard."""
        if not self.parts:
            return
        dropped = self.output.clear()
        self.stop_watching()
        cuts = heard(self.parts, dropped)
        for response_id in dict.fromkeys(pb.response_id for pb in self.parts):
            self._emit({"type": "output_audio_buffer.cleared", "response_id": response_id})
        self.parts.clear()
        for pb, played in cuts:
            if pb.item_id in self._conversation:
                self._conversation.truncate(pb.item_id, pb.content_index, played)
                self._emit({"type": "conversation.item.truncated", "item_id": pb.item_id,
                            "content_index": pb.content_index, "audio_end_ms": played})
        self._on_quiet()
