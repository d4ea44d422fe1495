"""Transcribing a user turn: the engine's words become the item's transcript.

Cascade engines need the text (the language model reads the conversation as text), so every
committed audio item is transcribed, whether or not the client configured
``audio.input.transcription``. The ``conversation.item.input_audio_transcription.*`` events
tell the client what was understood only while transcription is on: ``transcription: null``
turns them off, as it does at OpenAI (``shown`` is then False).

A turn may be transcribed more than once: :class:`EarlyTranscription` starts a run at each
pause of the caller (see realtime/turns.py), while the turn may still go on, so that the
words are ready when it ends. Every run of one item goes through its :class:`ItemTranscript`,
which emits ``conversation.item.input_audio_transcription.delta`` only for text that extends
what it has already sent, so the deltas of an item always add up to a prefix of its
transcript, and the ``completed`` event carries the whole of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from callgate.engines.base import Engine, EngineError, Stage, TranscriptDelta, TranscriptDone
from callgate.realtime.items import Conversation
from callgate.realtime.protocol import engine_error_event
from callgate.realtime.responses import Emit, Timeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    failure: dict[str, Any] | None
    stages: dict[str, float]
    seconds: float  # of audio heard


class ItemTranscript:
    """The transcription runs of one user item and the deltas they have sent."""

    def __init__(self, engine: Engine, emit: Emit, item_id: str, *, shown: bool) -> None:
        self.engine, self.emit, self.item_id, self.shown = engine, emit, item_id, shown
        self._sent = ""

    async def run(self, pcm: bytes) -> Transcript:
        """One run of ``engine.transcribe`` on ``pcm`` (24 kHz); never raises."""
        parts: list[str] = []
        final: str | None = None
        failure: dict[str, Any] | None = None
        stages: dict[str, float] = {}
        try:
            async for ev in self.engine.transcribe(pcm):
                if isinstance(ev, TranscriptDelta) and ev.text:
                    parts.append(ev.text)
                    self._offer("".join(parts))
                elif isinstance(ev, TranscriptDone):
                    final = ev.text
                elif isinstance(ev, Stage):
                    stages.setdefault(ev.name, ev.at)
                elif isinstance(ev, EngineError):
                    failure = {"type": "transcription_error", "code": ev.code,
                               "message": ev.message}
                    if ev.stage is not None:  # a worker died: say so beyond this item
                        self.emit(engine_error_event(ev))
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine bug must not end the call
            logger.exception("transcription failed")
            failure = {"type": "transcription_error", "code": "engine_error",
                       "message": str(exc) or type(exc).__name__}
        return Transcript((final if final is not None else "".join(parts)).strip(), failure,
                          stages, len(pcm) / 48000)

    def _offer(self, text: str) -> None:
        if self.shown and text.startswith(self._sent) and len(text) > len(self._sent):
            delta, self._sent = text[len(self._sent):], text
            self.emit({"type": "conversation.item.input_audio_transcription.delta",
                       "item_id": self.item_id, "content_index": 0, "delta": delta})

    def finish(self, conversation: Conversation, result: Transcript,
               timeline: Timeline | None) -> None:
        """The turn's final run: the transcript lands in the item, and the client hears."""
        if timeline is not None:
            for name, at in result.stages.items():
                timeline.stages.setdefault(name, at)
        item = conversation.get(self.item_id)
        if item is not None:
            item["content"][0]["transcript"] = "" if result.failure else result.text
        if not self.shown:
            return
        if result.failure is not None:
            self.emit({"type": "conversation.item.input_audio_transcription.failed",
                       "item_id": self.item_id, "content_index": 0, "error": result.failure})
            return
        self._offer(result.text)
        self.emit({"type": "conversation.item.input_audio_transcription.completed",
                   "item_id": self.item_id, "content_index": 0, "transcript": result.text,
                   "usage": {"type": "duration", "seconds": round(result.seconds, 3)}})


@dataclass(frozen=True, slots=True)
class _EarlyRun:
    item_id: str
    pause_id: int
    transcript: ItemTranscript
    task: asyncio.Task[Transcript]


class EarlyTranscription:
    """The run started at the caller's latest pause, kept until the turn is committed."""

    def __init__(self, engine: Engine, emit: Emit, shown: Callable[[], bool]) -> None:
        self.engine, self.emit, self._shown = engine, emit, shown
        self._run: _EarlyRun | None = None

    def paused(self, item_id: str, pause_id: int, pcm: bytes) -> None:
        """The caller paused in item ``item_id``: transcribe ``pcm``, all they said so far."""
        previous = self.discard()  # the caller spoke again since: its audio is not the turn
        transcript = (previous.transcript if previous is not None
                      and previous.item_id == item_id else self.item(item_id))
        task = asyncio.get_running_loop().create_task(transcript.run(pcm))
        self._run = _EarlyRun(item_id, pause_id, transcript, task)

    def committed(self, item_id: str, pause_id: int | None, pcm: bytes
                  ) -> tuple[ItemTranscript, Awaitable[Transcript]]:
        """The run that gives committed item ``item_id`` (audio ``pcm``) its words: the
        early one if the turn ended in its pause (nothing was said after it), else a new one."""
        run, self._run = self._run, None
        if run is not None and run.item_id == item_id and run.pause_id == pause_id:
            return run.transcript, run.task
        if run is not None:
            run.task.cancel()
        transcript = (run.transcript if run is not None and run.item_id == item_id
                      else self.item(item_id))
        return transcript, transcript.run(pcm)

    def item(self, item_id: str) -> ItemTranscript:
        return ItemTranscript(self.engine, self.emit, item_id, shown=self._shown())

    def discard(self) -> _EarlyRun | None:
        """Stop the early run, if any (also: the session ends); returns it."""
        run, self._run = self._run, None
        if run is not None:
            run.task.cancel()
        return run
