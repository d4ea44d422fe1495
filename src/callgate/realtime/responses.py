"""One response: engine output turned into the GA server events, in the order OpenAI sends them.

``response.created`` → per output item ``response.output_item.added`` +
``conversation.item.added`` → ``response.content_part.added`` → deltas → ``…done`` events →
``response.output_item.done`` + ``conversation.item.done`` → ``response.done`` (with usage).

Audio goes to the phone line for call sessions (``AudioOutput.play``; the socket then carries
no audio, as OpenAI's SIP sideband carries none) and over the socket as
``response.output_audio.delta`` for standalone sessions. What was handed to the line is counted
per content part (:class:`Playback`) so that a barge-in can truncate the item to what the
caller actually heard.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from callgate.engines.base import (
    AudioDelta,
    EngineError,
    EngineEvent,
    RelayedEvent,
    ResponseDone,
    ResponseRequest,
    Stage,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from callgate.log import event
from callgate.media.convert import FormatConverter
from callgate.media.formats import AudioFormat
from callgate.realtime.items import Conversation
from callgate.realtime.mcp import mcp_item
from callgate.realtime.protocol import engine_error_event, new_id
from callgate.realtime.session_config import WIRE_AUDIO, voice_name

logger = logging.getLogger(__name__)

# Audio deltas on the socket are cut to 200 ms: small enough for clients with a 1 MiB
# frame limit (openai SDK 2.x), large enough to keep the event count low.
MAX_DELTA_MS = 200

Emit = Callable[[dict[str, Any]], None]


class AudioOutput(Protocol):
    """The phone line of a call session (backed by the call's MediaStream)."""

    @property
    def audio_format(self) -> AudioFormat:
        """What :meth:`play` takes: the engine's ``line_audio`` for the call's codec."""
        ...

    def play(self, pcm: bytes) -> None:
        """Queue audio for paced playout."""
        ...

    def clear(self) -> int:
        """Drop what is queued (barge-in); the milliseconds dropped."""
        ...

    def queued_ms(self) -> int:
        """Audio accepted but not yet played out."""
        ...


@dataclass(slots=True)
class Playback:
    """Assistant audio of one content part handed to the phone line."""

    response_id: str
    item_id: str
    content_index: int
    audio: AudioFormat  # the line's, which sets what a byte of it lasts
    sent_bytes: int = 0

    @property
    def sent_ms(self) -> int:
        return self.audio.ms(self.sent_bytes)


@dataclass(slots=True)
class Timeline:
    """One turn, stamped once in one place: caller stops → … → first audio out.

    Times are ``time.monotonic()`` seconds; ``stages`` holds the engine's ``Stage`` stamps
    (``transcript_ready``, ``llm_first_token``, ``tts_first_audio`` …).
    """

    speech_end: float | None = None
    committed: float | None = None
    response_created: float | None = None
    first_audio_out: float | None = None
    stages: dict[str, float] = field(default_factory=dict)

    def as_ms(self) -> dict[str, int]:
        """Each point in ms after the caller stopped speaking (or the response started)."""
        origin = self.speech_end or self.committed or self.response_created
        if origin is None:
            return {}
        points = {"committed": self.committed, "response_created": self.response_created,
                  **self.stages, "first_audio_out": self.first_audio_out}
        return {name: round((at - origin) * 1000) for name, at in points.items()
                if at is not None}


@dataclass(frozen=True, slots=True)
class ResponseParams:
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    voice: Any
    speed: float
    max_output_tokens: int | str
    output_modalities: list[str]
    audio_format: dict[str, Any]
    in_conversation: bool = True
    input: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


def engine_request(params: ResponseParams, items: list[dict[str, Any]],
                   mcp_functions: list[dict[str, Any]] | None = None) -> ResponseRequest:
    """What the engine is asked: the response settings and the conversation (copies); the
    MCP servers' tools join the function tools."""
    max_tokens = params.max_output_tokens
    return ResponseRequest(
        instructions=params.instructions,
        conversation=[copy.deepcopy(i) for i in items],
        tools=[t for t in params.tools if t.get("type", "function") == "function"]
        + list(mcp_functions or []),
        tool_choice=params.tool_choice,
        voice=voice_name(params.voice),
        speed=params.speed,
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
        output_modalities=tuple(params.output_modalities))


class ResponseRun:
    """Turns one response's engine events into server events."""

    def __init__(self, *, params: ResponseParams, conversation: Conversation, emit: Emit,
                 output: AudioOutput | None, clock: Callable[[], float], timeline: Timeline,
                 socket_audio: AudioFormat = WIRE_AUDIO,
                 on_done: Callable[[ResponseRun], None],
                 log_fields: dict[str, Any] | None = None,
                 mcp_tools: dict[str, dict[str, Any]] | None = None) -> None:
        self.id = new_id("resp")
        # MCP tools the model may call, by name: {"tool": the session's mcp entry, "hints"}
        self.mcp_tools = mcp_tools or {}
        self.mcp_pending: list[dict[str, Any]] = []  # mcp_call items to run on the server
        self.params = params
        self.timeline = timeline
        self.playbacks: list[Playback] = []
        self.finished = False
        self.status = "in_progress"
        self._conversation = conversation
        self._emit = emit
        self._output = output
        self._clock = clock
        self._on_done = on_done
        self._log = log_fields or {}
        self._items: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None
        self._calls: dict[str, dict[str, Any]] = {}  # call_id -> its open function_call item
        # What the engine gives: the line's format, or (``socket_audio``) what it gives a
        # standalone session, converted to the response's format for the socket.
        self._format = output.audio_format if output is not None else socket_audio
        self._to_socket = (FormatConverter(socket_audio,
                                           AudioFormat.realtime(params.audio_format))
                           if output is None else None)
        self._bytes = 0
        self._audio_started = False
        self._engine_done: ResponseDone | None = None

    @property
    def audio(self) -> bool:
        return "audio" in self.params.output_modalities

    @property
    def audio_ms(self) -> int:
        return self._format.ms(self._bytes)

    def start(self) -> None:
        self.timeline.response_created = self._clock()
        self._emit({"type": "response.created", "response": self._object(None)})

    # --- engine events -------------------------------------------------------------------
    def handle(self, ev: EngineEvent) -> None:
        if self.finished:
            return
        if isinstance(ev, TextDelta):
            self._text(ev.text)
        elif isinstance(ev, AudioDelta):
            self._audio(ev.pcm)
        elif isinstance(ev, ToolCallDelta):
            self._tool_call_delta(ev)
        elif isinstance(ev, ToolCall):
            self._tool_call(ev)
        elif isinstance(ev, Stage):
            self.timeline.stages.setdefault(ev.name, ev.at)
        elif isinstance(ev, ResponseDone):
            self._engine_done = ev
        elif isinstance(ev, EngineError):
            if ev.stage is not None:  # a worker died: say so beyond this response's status
                self._emit(engine_error_event(ev))
            self.finish("failed", error={"type": "server_error", "code": ev.code,
                                         "message": ev.message})
        elif isinstance(ev, RelayedEvent):
            self._emit(dict(ev.event))

    def _open_message(self) -> dict[str, Any]:
        if self._message is not None:
            return self._message
        part = {"type": "output_audio", "transcript": ""} if self.audio else \
            {"type": "output_text", "text": ""}
        item: dict[str, Any] = {"id": new_id("item"), "object": "realtime.item",
                                "type": "message", "status": "in_progress",
                                "role": "assistant", "content": []}
        self._add_item(item)
        item["content"].append(part)
        self._emit(self._part_event("response.content_part.added", item,
                                    {"type": "audio", "transcript": ""} if self.audio else
                                    {"type": "text", "text": ""}))
        self._message = item
        if self.audio and self._output is not None:
            self.playbacks.append(Playback(self.id, item["id"], 0, self._format))
        return item

    def _text(self, text: str) -> None:
        if not text:
            return
        item = self._open_message()
        part = item["content"][0]
        if self.audio:
            part["transcript"] += text
            self._emit(self._part_event("response.output_audio_transcript.delta", item,
                                        delta=text))
        else:
            part["text"] += text
            self._emit(self._part_event("response.output_text.delta", item, delta=text))

    def _audio(self, pcm: bytes) -> None:
        if not self.audio or not pcm:
            return
        pcm = pcm[: len(pcm) - len(pcm) % self._format.sample_width]
        item = self._open_message()
        self._bytes += len(pcm)
        self._conversation.set_output_audio_ms(item["id"], 0, self.audio_ms)
        if self._output is not None:
            if not self._audio_started:
                self._audio_started = True
                self._emit({"type": "output_audio_buffer.started", "response_id": self.id})
            if self.timeline.first_audio_out is None:
                self.timeline.first_audio_out = self._clock()
            self.playbacks[-1].sent_bytes += len(pcm)
            self._output.play(pcm)
            return
        if self.timeline.first_audio_out is None:
            self.timeline.first_audio_out = self._clock()
        assert self._to_socket is not None
        data = self._to_socket.process(pcm)
        step = self._to_socket.target.byte_rate * MAX_DELTA_MS // 1000
        for start in range(0, len(data), step):
            chunk = data[start:start + step]
            self._emit(self._part_event("response.output_audio.delta", item,
                                        delta=base64.b64encode(chunk).decode()))

    def _calling(self, call_id: str, name: str) -> dict[str, Any]:
        """The function_call item of ``call_id``, added at its first argument piece."""
        item = self._calls.get(call_id)
        if item is None:
            self._close_message("completed")
            mcp = self.mcp_tools.get(name)
            if mcp is None:
                item = {"id": new_id("item"), "object": "realtime.item",
                        "type": "function_call", "status": "in_progress", "name": name,
                        "call_id": call_id, "arguments": ""}
            else:
                item = mcp_item(mcp["tool"], name, mcp.get("hints"))
            self._add_item(item)
            self._calls[call_id] = item
        return item

    def _arguments_event(self, kind: str, item: dict[str, Any], **fields: Any
                         ) -> dict[str, Any] | None:
        """``response.function_call_arguments.*`` or ``response.mcp_call_arguments.*``; an
        approval request shows its arguments only in the item."""
        ev = {"response_id": self.id, "item_id": item["id"],
              "output_index": self._items.index(item), **fields}
        if item["type"] == "function_call":
            return {"type": f"response.function_call_arguments.{kind}",
                    "call_id": item["call_id"], **ev}
        if item["type"] == "mcp_call":
            ev.pop("name", None)
            return {"type": f"response.mcp_call_arguments.{kind}", **ev}
        return None

    def _emit_some(self, ev: dict[str, Any] | None) -> None:
        if ev is not None:
            self._emit(ev)

    def _tool_call_delta(self, piece: ToolCallDelta) -> None:
        """Arguments stream out as the model writes them (as OpenAI streams them)."""
        item = self._calling(piece.call_id, piece.name)
        item["arguments"] += piece.delta
        self._emit_some(self._arguments_event("delta", item, delta=piece.delta))

    def _tool_call(self, call: ToolCall) -> None:
        item = self._calling(call.call_id, call.name)
        if call.arguments != item["arguments"]:  # no pieces came, or they fell short
            rest = call.arguments[len(item["arguments"]):] \
                if call.arguments.startswith(item["arguments"]) else call.arguments
            self._emit_some(self._arguments_event("delta", item, delta=rest))
        item["arguments"] = call.arguments
        self._emit_some(self._arguments_event("done", item, name=call.name,
                                              arguments=call.arguments))
        del self._calls[call.call_id]
        if item["type"] == "mcp_call":  # the session runs it, then closes it
            self.mcp_pending.append(item)
        else:
            self._close_item(item, "completed")

    def mcp_started(self, item: dict[str, Any]) -> None:
        self._emit({"type": "response.mcp_call.in_progress", "item_id": item["id"],
                    "output_index": self._items.index(item)})

    def mcp_finished(self, item: dict[str, Any]) -> None:
        """The server answered (``output``) or failed (``error``)."""
        kind = "failed" if item.get("error") is not None else "completed"
        self._emit({"type": f"response.mcp_call.{kind}", "item_id": item["id"],
                    "output_index": self._items.index(item)})
        self._close_item(item, "completed")

    def add_mcp_call(self, item: dict[str, Any]) -> None:
        """A call the application approved, run at the start of this response."""
        self._close_message("completed")
        self._add_item(item)
        self._emit_some(self._arguments_event("done", item, arguments=item["arguments"]))
        self.mcp_pending.append(item)

    # --- items -------------------------------------------------------------------------------
    def _add_item(self, item: dict[str, Any]) -> int:
        index = len(self._items)
        self._items.append(item)
        self._emit({"type": "response.output_item.added", "response_id": self.id,
                    "output_index": index, "item": copy.deepcopy(item)})
        if self.params.in_conversation:
            previous = self._conversation.add(item)
            self._emit({"type": "conversation.item.added", "previous_item_id": previous,
                        "item": copy.deepcopy(item)})
        return index

    def _close_item(self, item: dict[str, Any], status: str) -> None:
        if "status" in item:  # MCP items have none
            item["status"] = status
        index = self._items.index(item)
        self._emit({"type": "response.output_item.done", "response_id": self.id,
                    "output_index": index, "item": copy.deepcopy(item)})
        if self.params.in_conversation and item["id"] in self._conversation:
            self._emit({"type": "conversation.item.done", "item": copy.deepcopy(item)})

    def _close_message(self, status: str) -> None:
        item, self._message = self._message, None
        if item is None:
            return
        part = item["content"][0]
        if self.audio:
            self._emit(self._part_event("response.output_audio.done", item))
            self._emit(self._part_event("response.output_audio_transcript.done", item,
                                        transcript=part["transcript"]))
            shown = {"type": "audio", "transcript": part["transcript"]}
        else:
            self._emit(self._part_event("response.output_text.done", item, text=part["text"]))
            shown = {"type": "text", "text": part["text"]}
        self._emit(self._part_event("response.content_part.done", item, shown))
        self._close_item(item, status)

    def _part_event(self, kind: str, item: dict[str, Any], part: dict[str, Any] | None = None,
                    **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "response_id": self.id, "item_id": item["id"],
              "output_index": self._items.index(item), "content_index": 0, **fields}
        if part is not None:
            ev["part"] = part
        return ev

    # --- the end -----------------------------------------------------------------------------
    def finish_from_engine(self) -> None:
        """The engine stopped: completed, or what its ``ResponseDone`` said."""
        done = self._engine_done or ResponseDone()
        self.finish(done.status, reason=done.reason)

    def finish(self, status: str, *, reason: str | None = None,
               error: dict[str, Any] | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.status = status
        item_status = "completed" if status == "completed" else "incomplete"
        self._close_message(item_status)
        for call in [*self._calls.values(), *self.mcp_pending]:  # cut off unfinished
            self._close_item(call, "incomplete")
        self._calls.clear()
        self.mcp_pending.clear()
        details: dict[str, Any] | None = None
        if status != "completed":
            details = {"type": status}
            if reason is not None:
                details["reason"] = reason
            if error is not None:
                details["error"] = error
        self._emit({"type": "response.done", "response": self._object(details)})
        event(logger, "response_done", **self._log, response_id=self.id, status=status,
              reason=reason, audio_ms=self.audio_ms, **{
                  f"t_{name}_ms": ms for name, ms in self.timeline.as_ms().items()})
        self._on_done(self)

    def _object(self, details: dict[str, Any] | None) -> dict[str, Any]:
        done = self.status != "in_progress"
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": details,
            "output": [copy.deepcopy(item) for item in self._items] if done else [],
            "conversation_id": self._conversation.id if self.params.in_conversation else None,
            "output_modalities": list(self.params.output_modalities),
            "max_output_tokens": self.params.max_output_tokens,
            "audio": {"output": {"format": dict(self.params.audio_format),
                                 "voice": voice_name(self.params.voice)}},
            "usage": _usage(self._engine_done.usage if self._engine_done else {}) if done
            else None,
            "metadata": self.params.metadata,
        }


def _usage(raw: dict[str, int]) -> dict[str, Any]:
    """GA usage from the engine's counts.

    Engines report what they know under ``input_tokens``/``output_tokens`` and optionally
    ``input_text_tokens``, ``input_audio_tokens``, ``cached_tokens``, ``output_text_tokens``,
    ``output_audio_tokens``; missing counts are 0.
    """
    inp = int(raw.get("input_tokens", 0))
    out = int(raw.get("output_tokens", 0))
    return {
        "total_tokens": int(raw.get("total_tokens", inp + out)),
        "input_tokens": inp,
        "output_tokens": out,
        "input_token_details": {
            "text_tokens": int(raw.get("input_text_tokens", inp)),
            "audio_tokens": int(raw.get("input_audio_tokens", 0)),
            "image_tokens": 0,
            "cached_tokens": int(raw.get("cached_tokens", 0)),
            "cached_tokens_details": {"text_tokens": int(raw.get("cached_tokens", 0)),
                                      "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {
            "text_tokens": int(raw.get("output_text_tokens", out)),
            "audio_tokens": int(raw.get("output_audio_tokens", 0)),
        },
    }
