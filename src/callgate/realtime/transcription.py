"""Transcribing a committed user turn: the engine's words become the item's transcript.

Cascade engines need the text (the language model reads the conversation as text), so every
committed audio item is transcribed, whether or not the client configured
``audio.input.transcription``. The ``conversation.item.input_audio_transcription.*`` events
tell the client what was understood only while transcription is on: ``transcription: null``
turns them off, as it does at OpenAI (``shown`` is then False).
"""

from __future__ import annotations

import logging
from typing import Any

from callgate.engines.base import Engine, EngineError, Stage, TranscriptDelta, TranscriptDone
from callgate.realtime.items import Conversation
from callgate.realtime.protocol import engine_error_event
from callgate.realtime.responses import Emit, Timeline

logger = logging.getLogger(__name__)


async def transcribe(engine: Engine, conversation: Conversation, emit: Emit, item_id: str,
                     pcm: bytes, timeline: Timeline | None, *, shown: bool = True) -> None:
    """Run ``engine.transcribe`` on ``pcm``; the transcript lands in the item, never raises."""
    parts: list[str] = []
    final: str | None = None
    failure: dict[str, Any] | None = None
    try:
        async for ev in engine.transcribe(pcm):
            if isinstance(ev, TranscriptDelta) and ev.text:
                parts.append(ev.text)
                if shown:
                    emit({"type": "conversation.item.input_audio_transcription.delta",
                          "item_id": item_id, "content_index": 0, "delta": ev.text})
            elif isinstance(ev, TranscriptDone):
                final = ev.text
            elif isinstance(ev, Stage) and timeline is not None:
                timeline.stages.setdefault(ev.name, ev.at)
            elif isinstance(ev, EngineError):
                failure = {"type": "transcription_error", "code": ev.code,
                           "message": ev.message}
                if ev.stage is not None:  # a worker died: say so beyond this item's status
                    emit(engine_error_event(ev))
                break
    except Exception as exc:  # an engine bug must not end the call
        logger.exception("transcription failed")
        failure = {"type": "transcription_error", "code": "engine_error",
                   "message": str(exc) or type(exc).__name__}
    text = (final if final is not None else "".join(parts)).strip()
    item = conversation.get(item_id)
    if item is not None:
        item["content"][0]["transcript"] = "" if failure else text
    if not shown:
        return
    if failure is not None:
        emit({"type": "conversation.item.input_audio_transcription.failed",
              "item_id": item_id, "content_index": 0, "error": failure})
        return
    emit({"type": "conversation.item.input_audio_transcription.completed",
          "item_id": item_id, "content_index": 0, "transcript": text,
          "usage": {"type": "duration", "seconds": round(len(pcm) / 48000, 3)}})
