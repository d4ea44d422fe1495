"""The session object: its defaults, and how ``session.update`` changes it.

The object has the shape OpenAI sends in ``session.created`` (GA): ``type``, ``object``,
``id``, ``model``, ``output_modalities``, ``instructions``, ``tools``, ``tool_choice``,
``max_output_tokens``, ``tracing``, ``prompt``, ``expires_at``, ``include`` and
``audio.input``/``audio.output``. Updates are partial (openai-wire.md §4): a top-level field
given replaces the old value, ``audio.input.*``/``audio.output.*`` are merged key by key, and a
turn detection object given is completed with the defaults of its type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from openai.types.realtime.realtime_session_create_response import (
    RealtimeSessionCreateResponse,
)

from callgate.config import OPENAI_MODEL_PREFIXES
from callgate.engines.base import Engine
from callgate.media.formats import AudioFormat
from callgate.realtime.protocol import ProtocolError

# Whether two model names select the same engine (Settings.same_engine).
SameEngine = Callable[[str, str], bool]

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant on a phone call. Keep answers short and "
    "conversational, and speak naturally."
)
SESSION_LIFETIME_S = 60 * 60  # reported in expires_at, as OpenAI reports its session limit
# The WebSocket's audio by default: GA ``audio/pcm``, PCM16 at 24 kHz.
WIRE_AUDIO = AudioFormat.pcm(24000)
PCM_FORMAT: dict[str, Any] = WIRE_AUDIO.realtime_format()

# Unlike OpenAI (off unless asked for), callgate transcribes every user turn anyway (its
# language model reads text), so transcripts are shown by default; ``null`` turns them off.
TRANSCRIPTION_DEFAULTS: dict[str, Any] = {"model": "whisper-1"}
SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
    "silence_duration_ms": 500, "idle_timeout_ms": None, "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad", "eagerness": "auto", "create_response": True,
    "interrupt_response": True,
}

_TOP_LEVEL = ("model", "output_modalities", "instructions", "tools", "tool_choice",
              "max_output_tokens", "tracing", "prompt", "include", "truncation",
              "parallel_tool_calls", "reasoning")


def default_session(session_id: str, model: str, now_unix: float) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": int(now_unix) + SESSION_LIFETIME_S,
        "include": None,
        "audio": {
            "input": {"format": dict(PCM_FORMAT), "transcription": dict(TRANSCRIPTION_DEFAULTS),
                      "noise_reduction": None, "turn_detection": dict(SERVER_VAD_DEFAULTS)},
            "output": {"format": dict(PCM_FORMAT), "voice": "alloy", "speed": 1.0},
        },
    }


def apply_update(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The session after ``update`` (validated ``session`` of a ``session.update``).

    ``model`` is left to :func:`change_model`: the engine behind a session is chosen once,
    when it starts.
    Standalone sessions carry their audio on the socket in the format asked for
    (``audio/pcm`` at 24 kHz, ``audio/pcmu``, ``audio/pcma``); call sessions get their audio
    from the phone line, whose codec SDP negotiated, so the format is only reported back.
    """
    if update.get("type") != "realtime":
        raise ProtocolError("Only 'realtime' sessions are served here; transcription-only "
                            "sessions are not supported.", param="session.type")
    new = copy.deepcopy(current)
    for key in _TOP_LEVEL:
        if key in update and key != "model":
            new[key] = update[key]
    modalities = new.get("output_modalities") or ["audio"]
    if len(modalities) != 1:
        raise ProtocolError("output_modalities must be ['audio'] or ['text'], not both.",
                            param="session.output_modalities")
    max_tokens = new.get("max_output_tokens")
    if isinstance(max_tokens, int) and not 1 <= max_tokens <= 4096:
        raise ProtocolError("max_output_tokens must be 1-4096 or 'inf'.",
                            param="session.max_output_tokens")
    audio = update.get("audio") or {}
    for direction in ("input", "output"):
        given = audio.get(direction) or {}
        target = new["audio"][direction]
        for key, value in given.items():
            if key == "turn_detection":
                target[key] = complete_turn_detection(value)
            else:
                target[key] = value
        fmt = target.get("format") or {}
        if fmt.get("type", "audio/pcm") == "audio/pcm":
            target["format"] = dict(PCM_FORMAT)
    speed = new["audio"]["output"].get("speed")
    if speed is not None and not 0.25 <= float(speed) <= 1.5:
        raise ProtocolError("speed must be between 0.25 and 1.5.",
                            param="session.audio.output.speed")
    threshold = (new["audio"]["input"].get("turn_detection") or {}).get("threshold")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ProtocolError("threshold must be between 0.0 and 1.0.",
                            param="session.audio.input.turn_detection.threshold")
    return new


def change_model(current: str, wanted: str, same_engine: SameEngine | None) -> str:
    """The session's model after a ``session.update`` that names ``wanted``.

    The engine behind a session is chosen when it starts, so a name served by another engine
    is refused; a name served by the same one (OpenAI's realtime names are aliases of the
    default engine) is taken. Without ``same_engine``, only OpenAI's names are known to share
    one.
    """
    if wanted == current:
        return current
    if same_engine is not None:
        same = same_engine(current, wanted)
    else:
        same = current.startswith(OPENAI_MODEL_PREFIXES) and \
            wanted.startswith(OPENAI_MODEL_PREFIXES)
    if not same:
        raise ProtocolError(
            f"The model cannot change during a session: this session runs {current!r}, and "
            f"{wanted!r} is not served by the same engine. Start a new session (or accept "
            f"the call) with model {wanted!r}.", code="model_change_unsupported",
            param="session.model")
    return wanted


def check_engine(session: dict[str, Any], engine: Engine) -> None:
    """Refuse a setting that the session's engine cannot carry out, naming it."""
    refused = engine.unsupported(session)
    if refused is not None:
        path, why = refused
        raise ProtocolError(f"'session.{path}' is not supported with model "
                            f"{session.get('model')!r}: {why}.", code="unsupported_for_model",
                            param=f"session.{path}")


def complete_turn_detection(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    defaults = SERVER_VAD_DEFAULTS if value.get("type") == "server_vad" else \
        SEMANTIC_VAD_DEFAULTS
    return {**defaults, **value}


def voice_name(voice: Any) -> str:
    """A voice by name: a custom voice (``{"id": "voice_…"}``) by its id, as the session and
    response objects (which type the voice as a string) show it."""
    return str(voice["id"]) if isinstance(voice, dict) else str(voice)


def shown(session: dict[str, Any]) -> dict[str, Any]:
    """The session as ``session.created``/``session.updated`` show it: the fields of the SDK's
    session object. Settings the request takes but the object lacks (``parallel_tool_calls``)
    still apply; a strict client would refuse an event that showed them."""
    out = {key: copy.deepcopy(value) for key, value in session.items()
           if key in RealtimeSessionCreateResponse.model_fields}
    output = out["audio"]["output"]
    if output.get("voice") is not None:
        output["voice"] = voice_name(output["voice"])
    return out


def to_engine_config(session: dict[str, Any]) -> dict[str, Any]:
    """What ``Engine.start``/``Engine.update`` receive: the session object itself (a copy)."""
    return copy.deepcopy(session)
