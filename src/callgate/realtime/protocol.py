"""The GA Realtime wire format: client events validated on the way in, server events built.

Client events are checked against the ``openai`` SDK's own pydantic models
(``openai.types.realtime``), in strict JSON mode so that a string where a number belongs is
refused as OpenAI refuses it, and with unknown parameters refused too (the GA server answers
``Unknown parameter: 'session.voice'`` rather than silently ignoring a beta-era field). A
failed check becomes a :class:`ProtocolError` that the session turns into an ``error`` event
naming the offending ``event_id`` and ``param``; the connection stays up.

Limits: one client event is at most :data:`MAX_EVENT_BYTES` (15 MiB, the size OpenAI
documents for ``input_audio_buffer.append``). The WebSocket server's own frame limit must sit
above it (uvicorn's ``ws_max_size`` default, 16 MiB, does) so that an oversized event is
answered with an ``error`` event instead of a closed socket.

An explicit ``null`` is decided here, once, for every event and the ``/accept`` body: it means
"not given" (the SDK types every optional field ``Optional[...] = None`` and OpenAI treats
``null`` as unset, so a ``response.create`` override of ``null`` leaves the session's value in
force), except for the fields whose SDK docstring gives ``null`` a meaning of its own
(:data:`NULL_IS_A_VALUE`: turn detection, transcription and noise reduction off, tracing
disabled). Handlers therefore see either a value or no key at all.
"""

from __future__ import annotations

import json
import re
import secrets
import typing
from dataclasses import dataclass
from typing import Any

import pydantic
from openai import BaseModel as SdkModel
from openai.types.realtime.realtime_audio_config_input import RealtimeAudioConfigInput
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from openai.types.realtime.realtime_transcription_session_audio_input import (
    RealtimeTranscriptionSessionAudioInput,
)
from openai.types.realtime.response_item_reference import ResponseItemReference

from callgate.engines.base import EngineError

MAX_EVENT_BYTES = 15 * 1024 * 1024

# Every GA client event type -> the SDK model that describes it.
CLIENT_EVENT_MODELS: dict[str, type[SdkModel]] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in typing.get_args(typing.get_args(RealtimeClientEvent)[0])
}

# The fields whose ``null`` the SDK documents as a value ("set to null to turn off/disable");
# tests/realtime/test_rt_nulls.py derives the same set from the SDK's docstrings.
NULL_IS_A_VALUE: dict[type[pydantic.BaseModel], frozenset[str]] = {
    RealtimeAudioConfigInput: frozenset({"noise_reduction", "transcription", "turn_detection"}),
    RealtimeTranscriptionSessionAudioInput: frozenset(
        {"noise_reduction", "transcription", "turn_detection"}),
    RealtimeSessionCreateRequest: frozenset({"tracing"}),
}

_FIELD = re.compile(r"[a-z_][a-z0-9_]*\Z")
# pydantic names union members in error locations; these are not field names.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "object"})
_DISCRIMINATORS = frozenset({"type", "role"})


def new_id(prefix: str) -> str:
    """An OpenAI-style id: ``event_…``, ``item_…``, ``resp_…``, ``sess_…``."""
    return f"{prefix}_{secrets.token_hex(11)}"


class ProtocolError(Exception):
    """A client event that cannot be carried out; becomes an ``error`` server event."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 event_id: str | None = None, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def to_event(self) -> dict[str, Any]:
        return {"type": "error", "event_id": new_id("event"),
                "error": {"type": self.error_type, "code": self.code, "message": self.message,
                          "param": self.param, "event_id": self.event_id}}


def engine_error_event(error: EngineError) -> dict[str, Any]:
    """The ``error`` server event for an engine failure that is not the client's doing."""
    return ProtocolError(error.message, code=error.code, error_type="server_error").to_event()


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A validated client event: ``data`` is its JSON with only the fields the client set."""

    type: str
    event_id: str | None
    data: dict[str, Any]


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """Decode and validate one client event (one WebSocket text frame)."""
    if len(raw) > MAX_EVENT_BYTES:
        raise ProtocolError(f"The event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES} "
                            "bytes per event. Send audio in smaller appends.",
                            code="event_too_large")
    try:
        # RFC 8259 §8.1: JSON between systems is UTF-8.
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        data = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"The event is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("An event must be a JSON object.", code="invalid_event")
    event_id = data.get("event_id")
    if not isinstance(event_id, str):
        if event_id is not None:
            raise ProtocolError("'event_id' must be a string.", code="invalid_type",
                                param="event_id")
        event_id = None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("Missing required parameter: 'type'.",
                            code="missing_required_parameter", param="type", event_id=event_id)
    model = CLIENT_EVENT_MODELS.get(kind)
    if model is None:
        raise ProtocolError(f"Invalid value: '{kind}'. Supported values are: "
                            + ", ".join(f"'{name}'" for name in sorted(CLIENT_EVENT_MODELS))
                            + ".", code="invalid_value", param="type", event_id=event_id)
    references: dict[int, dict[str, Any]] = {}
    if kind == "response.create":
        text, references = _take_references(data, text, event_id)
    parsed = validate(model, text, event_id=event_id)
    if references:
        inputs = parsed["response"]["input"]
        for index in sorted(references):
            inputs.insert(index, references[index])
    return ClientEvent(kind, event_id, parsed)


def _take_references(data: dict[str, Any], text: str,
                     event_id: str | None) -> tuple[str, dict[int, dict[str, Any]]]:
    """``item_reference`` entries of ``response.input`` (the SDK's event model lacks them)."""
    response = data.get("response")
    inputs = response.get("input") if isinstance(response, dict) else None
    if not isinstance(inputs, list):
        return text, {}
    references = {
        index: validate(ResponseItemReference, json.dumps(entry), event_id=event_id,
                        prefix=f"response.input[{index}].")
        for index, entry in enumerate(inputs)
        if isinstance(entry, dict) and entry.get("type") == "item_reference"}
    if references:
        assert isinstance(response, dict)
        response["input"] = [e for i, e in enumerate(inputs) if i not in references]
        text = json.dumps(data)
    return text, references


def validate(model: type[SdkModel], raw_json: str, *, event_id: str | None = None,
             prefix: str = "") -> dict[str, Any]:
    """Validate ``raw_json`` as ``model``; the fields the client set, or ProtocolError."""
    try:
        instance = model.model_validate_json(raw_json, strict=True)
    except pydantic.ValidationError as exc:
        raise _explain(exc, event_id, prefix) from None
    extra = find_extra(instance)
    if extra is not None:
        param = f"{prefix}{extra}"
        raise ProtocolError(f"Unknown parameter: '{param}'.", code="unknown_parameter",
                            param=param, event_id=event_id)
    forget_nulls(instance)
    dumped: dict[str, Any] = instance.model_dump(mode="json", exclude_unset=True)
    return dumped


def validate_session(session: dict[str, Any]) -> dict[str, Any]:
    """Validate a GA session object (the ``/accept`` body or a default session config)."""
    return validate(RealtimeSessionCreateRequest, json.dumps(session), prefix="session.")


def forget_nulls(value: object) -> None:
    """Mark every explicit ``null`` as not given, except those in :data:`NULL_IS_A_VALUE`."""
    if isinstance(value, pydantic.BaseModel):
        meaningful = NULL_IS_A_VALUE.get(type(value), frozenset())
        given = value.model_fields_set
        for name in list(given):
            field_value = getattr(value, name)
            if field_value is None and name not in meaningful:
                given.discard(name)
            else:
                forget_nulls(field_value)
    elif isinstance(value, list):
        for element in value:
            forget_nulls(element)


def find_extra(value: object, path: str = "") -> str | None:
    """The path of the first field no SDK model declares (the SDK models allow extras)."""
    if isinstance(value, pydantic.BaseModel):
        if value.model_extra:
            return path + next(iter(value.model_extra))
        for name in type(value).model_fields:
            found = find_extra(getattr(value, name), f"{path}{name}.")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, element in enumerate(value):
            found = find_extra(element, f"{path.rstrip('.')}[{index}].")
            if found is not None:
                return found
    return None


def _is_field(part: object) -> bool:
    return isinstance(part, int) or (isinstance(part, str) and bool(_FIELD.match(part))
                                     and part not in _UNION_TAGS)


def _param(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _is_field(part):
            text += f".{part}" if text else part
    return text


def _explain(exc: pydantic.ValidationError, event_id: str | None,
             prefix: str) -> ProtocolError:
    """One clear error out of pydantic's list, which holds one entry per union member tried.

    A member whose ``type``/``role`` literal did not match is the wrong member, so its other
    errors are noise; the first error of a member that did match names the real problem.
    """
    errors = exc.errors(include_url=False)
    rejected: list[tuple[int | str, ...]] = []
    for err in errors:
        loc = tuple(err["loc"])
        if (err["type"] == "literal_error" and len(loc) >= 2 and loc[-1] in _DISCRIMINATORS
                and not _is_field(loc[-2])):
            rejected.append(loc[:-1])
    relevant = [e for e in errors
                if not any(tuple(e["loc"])[:len(r)] == r for r in rejected)] or errors
    err = relevant[0]
    param = prefix + _param(tuple(err["loc"]))
    if err["type"] == "missing":
        return ProtocolError(f"Missing required parameter: '{param}'.",
                             code="missing_required_parameter", param=param, event_id=event_id)
    kind = err["type"]
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else \
        "invalid_value"
    shown = json.dumps(err.get("input"))[:80] if "input" in err else "?"
    return ProtocolError(f"Invalid value for '{param}': {err['msg']} (got {shown}).",
                         code=code, param=param, event_id=event_id)
