"""A session whose engine speaks the Realtime protocol itself (an upstream Realtime server).

With such an engine (``engines/upstream.py``) the conversation, turn detection and responses
live upstream and this session is only the SIP front, so it passes events through instead of
running its own conversation:

* client events are still validated here (a bad one is answered to its sender, as always),
  then forwarded upstream unchanged. On a call, ``output_audio_buffer.clear`` is the
  exception: the phone line is this side's, so it is cleared here.
* upstream server events reach every subscriber unchanged (ids, order, content), with two
  exceptions. ``session.created`` is not repeated: each subscriber got one when it attached.
  On a call, ``response.output_audio.delta`` is not relayed: its audio goes down the phone
  line, and a SIP call's sideband socket carries no audio (as OpenAI's carries none); a
  standalone socket gets the deltas as they came and plays them itself.
* on a call this side does for the line what OpenAI's SIP interface does:
  ``output_audio_buffer.started`` when a response's audio starts, ``.stopped`` when the line
  has played it all (after ``response.done``), and on barge-in (upstream
  ``input_audio_buffer.speech_started``) or ``output_audio_buffer.clear`` the queued audio is
  dropped, ``output_audio_buffer.cleared`` is said, and the upstream is sent
  ``conversation.item.truncate`` with how much of each item the caller heard: a WebSocket
  upstream cannot know it (OpenAI's WebSocket guide leaves truncation to the client).
* the session object the upstream reports (``session.created``/``session.updated``) becomes
  this session's config, so a socket that attaches later sees the upstream's settings.
* an engine failure (the upstream went away) becomes an ``error`` event; the call stays up.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from callgate.engines.base import AudioDelta, EngineError, EngineEvent, RelayedEvent
from callgate.realtime.playback import heard
from callgate.realtime.protocol import ClientEvent, ProtocolError, engine_error_event
from callgate.realtime.responses import Playback

if TYPE_CHECKING:
    from callgate.realtime.session import RealtimeSession


@runtime_checkable
class RelayEngine(Protocol):
    """An engine that takes the application's client events as they are."""

    def forward_client_event(self, ev: dict[str, Any]) -> None:
        """Send ``ev`` on; raises RuntimeError, with a message for the application, if it
        cannot (the upstream is gone)."""
        ...


class Relay:
    def __init__(self, session: RealtimeSession, engine: RelayEngine) -> None:
        self.session = session
        self.engine = engine
        self.last_response_id: str | None = None

    # --- application -> upstream -------------------------------------------------------------
    def client_event(self, ev: ClientEvent) -> None:
        if ev.type == "output_audio_buffer.clear" and self.session.line is not None:
            if not self.clear_line() and self.last_response_id is not None:
                self.session.emit({"type": "output_audio_buffer.cleared",
                                   "response_id": self.last_response_id})
            return
        try:
            self.engine.forward_client_event(ev.data)
        except RuntimeError as exc:
            raise ProtocolError(str(exc), code="upstream_unavailable", event_id=ev.event_id,
                                error_type="server_error") from None

    # --- upstream -> application and phone line -------------------------------------------
    def engine_event(self, ev: EngineEvent) -> None:
        line = self.session.line
        if isinstance(ev, AudioDelta):
            if line is not None and line.parts:
                line.parts[-1].sent_bytes += len(ev.pcm)
                line.output.play(ev.pcm)
        elif isinstance(ev, EngineError):
            self.session.emit(engine_error_event(ev))
        elif isinstance(ev, RelayedEvent):
            self._server_event(ev.event)

    def _server_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        line = self.session.line
        if kind in ("session.created", "session.updated") and isinstance(ev.get("session"),
                                                                       dict):
            self.session.config = copy.deepcopy(ev["session"])
            if kind == "session.created":
                return
        if kind == "response.output_audio.delta" and line is not None:
            self._audio_part(ev)
            return  # the audio itself follows as AudioDelta, for the line
        self.session.emit(dict(ev))
        if line is None:
            return
        if kind == "input_audio_buffer.speech_started" and self._interrupts():
            self.clear_line()
        elif kind == "response.done" and line.parts:
            line.watch_drain()

    def _audio_part(self, ev: dict[str, Any]) -> None:
        """Count the delta's audio on its content part; the first of a response starts it."""
        line = self.session.line
        assert line is not None
        key = (str(ev.get("response_id")), str(ev.get("item_id")),
               int(ev.get("content_index") or 0))
        last = line.parts[-1] if line.parts else None
        if last is not None and (last.response_id, last.item_id, last.content_index) == key:
            return
        if key[0] not in {pb.response_id for pb in line.parts}:
            line.stop_watching()  # a new response is talking: it will be drained in turn
            self.last_response_id = key[0]
            self.session.emit({"type": "output_audio_buffer.started", "response_id": key[0]})
        line.parts.append(Playback(*key, line.output.audio_format))

    def _interrupts(self) -> bool:
        audio = self.session.config.get("audio") or {}
        detection = (audio.get("input") or {}).get("turn_detection") or {}
        return bool(detection.get("interrupt_response", True))

    def clear_line(self) -> bool:
        """Barge-in: drop the line's queued audio and tell the upstream what was heard."""
        line = self.session.line
        if line is None or not line.parts:
            return False
        # What line.clear() is about to drop, split over the parts as it will split it.
        cuts = heard(line.parts, line.output.queued_ms())
        line.clear()  # says output_audio_buffer.cleared
        # An upstream that is gone needs no truncation: its loss was already reported.
        with contextlib.suppress(RuntimeError):
            for pb, played in cuts:
                self.engine.forward_client_event({
                    "type": "conversation.item.truncate", "item_id": pb.item_id,
                    "content_index": pb.content_index, "audio_end_ms": played})
        return True
