"""An explicit ``null`` means what OpenAI documents: "not given" everywhere, except the fields
whose SDK docstring gives it a meaning of its own (detection, transcription and noise
reduction off, tracing disabled). Events are built from the openai SDK's GA models, one
optional field set to null at a time."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
from typing import Any

import pytest
from openai.types.realtime.realtime_response_create_params import RealtimeResponseCreateParams
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest

from callgate.engines.base import ResponseRequest, ToolCall
from callgate.realtime.protocol import CLIENT_EVENT_MODELS, NULL_IS_A_VALUE, parse_client_event
from callgate.realtime.session import RealtimeSession

from .doubles import FakeLine, ManualClock, ScriptedEngine, Watcher, tone
from .sdk_samples import (
    Path,
    allows_none,
    field_docs,
    get_at,
    models_in,
    sample,
    with_null,
    without,
    without_unset,
)

pytestmark = pytest.mark.anyio

TOOL = {"type": "function", "name": "lookup", "description": "Look a thing up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
SESSION: dict[str, Any] = {
    "model": "local", "instructions": "You are Ada, the clinic's receptionist.",
    "tools": [TOOL], "tool_choice": "required", "max_output_tokens": 300,
    "audio": {"input": {"turn_detection": None}, "output": {"voice": "marin"}}}
VARIANTS = 4  # enough to visit each member of the SDK's small unions
NULL_DOC = re.compile(r"(?i)\bset\b[^.]*?\bto\s+`?null`?\s+to\s+(turn\s+off|disable)")


async def start(engine: ScriptedEngine, *, line: bool = False,
                **config: Any) -> tuple[RealtimeSession, Watcher]:
    session = RealtimeSession(config={**copy.deepcopy(SESSION), **config}, engine=engine,
                              output=FakeLine(ManualClock()) if line else None)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()  # session.created
    return session, watcher


async def settle(session: RealtimeSession) -> None:
    """Until the response and the transcriptions that the last event started have ended."""
    for _ in range(2000):
        if session.active is None and not session._transcriptions:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the session did not settle")


async def send(session: RealtimeSession, watcher: Watcher, event: dict[str, Any],
               ) -> list[dict[str, Any]]:
    await session.handle_client_event(json.dumps(event), watcher.sub)
    await settle(session)
    await asyncio.sleep(0)
    return watcher.pending()


def server_errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [e["error"] for e in events
             if e["type"] == "error" and e["error"]["type"] == "server_error"]
    for e in events:
        details = e["response"].get("status_details") if e["type"] == "response.done" else None
        if details and (details.get("error") or {}).get("type") == "server_error":
            found.append(details["error"])
    return found


def test_null_meanings_are_the_ones_the_sdk_documents() -> None:
    roots = [*CLIENT_EVENT_MODELS.values(), RealtimeSessionCreateRequest]
    documented: set[tuple[type[Any], str]] = set()
    for root in roots:
        for model in models_in(root):
            for name, doc in field_docs(model).items():
                if NULL_DOC.search(" ".join(doc.split())):
                    documented.add((model, name))
    table = {(model, name) for model, names in NULL_IS_A_VALUE.items() for name in names}
    assert table == documented


@pytest.mark.parametrize("kind", sorted(CLIENT_EVENT_MODELS))
async def test_every_optional_field_null_in_turn_no_server_error(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each client event, filled from the SDK model, then with each optional field null."""
    model = CLIENT_EVENT_MODELS[kind]
    cases: list[tuple[int, Path | None]] = []
    samples = [sample(model, variant) for variant in range(VARIANTS)]
    for variant, filled in enumerate(samples):
        cases += [(variant, None)] + [(variant, path) for path in filled.optional]
    for line in (False, True):
        for variant, path in cases:
            base = without_unset(samples[variant].value)
            event = base if path is None else with_null(base, path)
            engine = ScriptedEngine(reply=lambda _: [ToolCall("call_1", "lookup", "{}")])
            session, watcher = await start(engine, line=line)
            # the filled events name item "x": let it exist
            await send(session, watcher, {"type": "conversation.item.create", "item": {
                "id": "x", "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}]}})
            parse_client_event(json.dumps(event))  # what the SDK accepts, callgate accepts
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                events = await send(session, watcher, event)
            assert not server_errors(events), (path, event, server_errors(events))
            assert not [r for r in caplog.records if r.exc_info], (path, event)
            await session.close("test over")


def response_fields() -> list[Path]:
    paths = [(name,) for name, info in RealtimeResponseCreateParams.model_fields.items()
             if allows_none(info.annotation)]
    return [*paths, ("audio", "output"), ("audio", "output", "voice"),
            ("audio", "output", "format")]


@pytest.mark.parametrize("path", response_fields(), ids=".".join)
async def test_response_create_null_inherits_the_session(path: Path) -> None:
    """``response.create`` with a null override asks the LLM what no override asks it."""
    asked: list[tuple[ResponseRequest, dict[str, Any]]] = []
    for response in ({}, with_null({"audio": {"output": {}}}, path)):
        engine = ScriptedEngine()
        session, watcher = await start(engine)
        await send(session, watcher, {"type": "conversation.item.create", "item": {
            "id": "item_q", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Who are you?"}]}})
        events = await send(session, watcher, {"type": "response.create",
                                               "response": response})
        assert not [e for e in events if e["type"] == "error"], events
        (done,) = [e["response"] for e in events if e["type"] == "response.done"]
        assert done["status"] == "completed", done
        (request,) = engine.requests
        shown = {k: v for k, v in done.items() if k not in ("id", "output", "conversation_id")}
        asked.append((request, shown))
        await session.close("test over")
    (given, given_shown), (nulled, nulled_shown) = asked
    assert nulled == given and nulled_shown == given_shown
    assert nulled.instructions == SESSION["instructions"]
    assert [t["name"] for t in nulled.tools] == ["lookup"]
    assert (nulled.tool_choice, nulled.voice, nulled.max_output_tokens) == \
        ("required", "marin", 300)


async def test_livekit_generate_reply_keeps_the_instructions() -> None:
    """LiveKit's generate_reply: instructions null beside metadata, after a tool result."""
    engine = ScriptedEngine()
    session, watcher = await start(engine)
    for item in ({"type": "function_call", "call_id": "call_1", "name": "lookup",
                  "arguments": "{}"},
                 {"type": "function_call_output", "call_id": "call_1", "output": "open"}):
        await send(session, watcher, {"type": "conversation.item.create", "item": item})
    await send(session, watcher, {"type": "response.create", "response": {
        "instructions": None, "metadata": {"client_event_id": "ev_1"}, "tools": None,
        "conversation": None}})
    (request,) = engine.requests
    assert request.instructions == SESSION["instructions"]
    assert [i["type"] for i in request.conversation] == ["function_call",
                                                         "function_call_output"]


def session_fields() -> list[tuple[int, Path]]:
    """Every optional field of the session object (with a variant that has it)."""
    found: dict[Path, int] = {}
    for variant in range(VARIANTS):
        for path in sample(RealtimeSessionCreateRequest, variant).optional:
            found.setdefault(path, variant)
    return sorted(((v, p) for p, v in found.items()), key=lambda vp: tuple(map(str, vp[1])))


MEANINGFUL = {("tracing",), ("audio", "input", "turn_detection"),
              ("audio", "input", "transcription"), ("audio", "input", "noise_reduction")}


@pytest.mark.parametrize("variant,path", session_fields(),
                         ids=lambda x: ".".join(map(str, x)) if isinstance(x, tuple) else "")
async def test_session_update_null_is_not_given(variant: int, path: Path) -> None:
    """``session.update`` with a field null does what the update without it does, unless
    the SDK gives that null a meaning; then the field is off."""
    full = without_unset(sample(RealtimeSessionCreateRequest, variant).value)
    outcomes: list[Any] = []
    for nulled in (False, True):
        # the top-level field the path is in, as filled, with the field left out or null
        top = with_null(full, path) if nulled else without(full, path)
        update = {"type": "realtime", **({path[0]: top[path[0]]} if path[0] in top else {})}
        engine = ScriptedEngine()
        session, watcher = await start(engine, audio={
            "input": {"turn_detection": {"type": "server_vad", "threshold": 0.6},
                      "transcription": {"model": "whisper-1", "language": "en"},
                      "noise_reduction": {"type": "near_field"}},
            "output": {"voice": "marin"}}, tracing="auto")
        events = await send(session, watcher, {"type": "session.update", "session": update})
        assert not server_errors(events)
        outcome = [{k: v for k, v in e.items() if k != "event_id"} for e in events
                   if e["type"] in ("session.updated", "error")]  # (MCP listings have ids)
        for e in outcome:  # what differs between any two sessions
            e.get("error", {}).pop("event_id", None)
            for key in ("id", "expires_at"):
                e.get("session", {}).pop(key, None)
        outcomes.append((outcome, session.detector is None))
        await session.close("test over")
    if path not in MEANINGFUL:
        assert outcomes[1] == outcomes[0]
        return
    (updated,) = [e["session"] for e in outcomes[1][0] if e["type"] == "session.updated"]
    assert get_at(updated, path) is None
    assert outcomes[1][1] == (path == ("audio", "input", "turn_detection"))


async def test_transcription_null_turns_transcripts_off() -> None:
    engine = ScriptedEngine(transcripts=["what time do you open"])
    session, watcher = await start(engine)
    await send(session, watcher, {"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": None}}}})
    await send(session, watcher, {"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(tone(300)).decode()})
    events = await send(session, watcher, {"type": "input_audio_buffer.commit"})
    events += await send(session, watcher, {"type": "response.create"})
    assert not [e for e in events if "input_audio_transcription" in e["type"]], events
    # the language model still reads what the caller said
    (request,) = engine.requests
    assert request.conversation[0]["content"][0]["transcript"] == "what time do you open"


async def test_accept_body_nulls_are_not_given() -> None:
    engine = ScriptedEngine()
    session, _ = await start(engine, instructions=None, tools=None, max_output_tokens=None)
    assert session.config["instructions"] != ""
    assert session.config["tools"] == [] and session.config["max_output_tokens"] == "inf"


def test_sample_paths_are_real() -> None:
    """The sweep's paths point at fields of the filled events (the generator is sound)."""
    for model in CLIENT_EVENT_MODELS.values():
        filled = sample(model)
        for path in filled.optional:
            get_at(filled.value, path)
