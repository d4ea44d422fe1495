"""What each GA client event does to a session (the event is already validated).

Errors raise :class:`ProtocolError` with the codes OpenAI uses where they are known
(``conversation_already_has_active_response``, ``response_cancel_not_active``,
``input_audio_buffer_commit_empty``, ``item_*_invalid_item_id``); the session answers them with
an ``error`` event to the client that sent the event.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from callgate.realtime.items import normalize_item
from callgate.realtime.protocol import ClientEvent, ProtocolError
from callgate.realtime.responses import ResponseParams
from callgate.realtime.session_config import (
    apply_update,
    change_model,
    check_engine,
    shown,
    to_engine_config,
)

if TYPE_CHECKING:
    from callgate.realtime.session import RealtimeSession

Handler = Callable[["RealtimeSession", ClientEvent], Awaitable[None]]


async def dispatch(session: RealtimeSession, ev: ClientEvent) -> None:
    try:
        await _HANDLERS[ev.type](session, ev)
    except ProtocolError as err:
        err.event_id = err.event_id or ev.event_id
        raise


async def _session_update(session: RealtimeSession, ev: ClientEvent) -> None:
    update = ev.data["session"]
    config = apply_update(session.config, update)
    if "model" in update:
        config["model"] = change_model(session.config["model"], update["model"],
                                       session.same_engine)
    check_engine(config, session.engine)
    session.config = config
    if not session.engine.duplex:
        session.mcp.configure(config["tools"])
    session.reconfigure_turns()
    await session.engine.update(to_engine_config(session.config))
    session.emit({"type": "session.updated", "session": shown(session.config)})


async def _append(session: RealtimeSession, ev: ClientEvent) -> None:
    try:
        pcm = base64.b64decode(ev.data["audio"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("'audio' is not valid base64.", param="audio") from None
    session.feed_socket_audio(pcm)


def _no_duplex(session: RealtimeSession, what: str) -> None:
    if session.engine.duplex:
        raise ProtocolError(f"{what} is not available with model '{session.config['model']}': "
                            "it listens to the audio stream directly.",
                            code="unsupported_for_model")


async def _commit(session: RealtimeSession, ev: ClientEvent) -> None:
    _no_duplex(session, "input_audio_buffer.commit")
    session.commit(event_id=ev.event_id)


async def _clear_input(session: RealtimeSession, ev: ClientEvent) -> None:
    _no_duplex(session, "input_audio_buffer.clear")
    session.buffer.clear()
    if session.detector is not None:
        session.detector.reset()
    session.emit({"type": "input_audio_buffer.cleared"})


async def _clear_output(session: RealtimeSession, ev: ClientEvent) -> None:
    if session.output is None:
        raise ProtocolError("output_audio_buffer.clear applies to phone-call sessions only: "
                            "a standalone client plays the audio itself.",
                            code="unsupported_for_session")
    if not session.line and session.active is None:
        if session.last_response_id is not None:  # nothing queued: still acknowledge it
            session.emit({"type": "output_audio_buffer.cleared",
                          "response_id": session.last_response_id})
        return
    session.interrupt("client_cancelled")


async def _create_item(session: RealtimeSession, ev: ClientEvent) -> None:
    item, audio = normalize_item(ev.data["item"])
    previous = session.conversation.add(item, ev.data.get("previous_item_id"),
                                        event_id=ev.event_id)
    session.item_added(item, previous)
    if audio is not None:
        session.conversation.store_audio(item["id"], audio)
        needs_text = any(p.get("type") == "input_audio" and p.get("transcript") is None
                         for p in item.get("content") or [])
        if needs_text and not session.engine.duplex:
            session.transcribe(item["id"], audio)


async def _retrieve(session: RealtimeSession, ev: ClientEvent) -> None:
    item_id = ev.data["item_id"]
    item = session.conversation.get(item_id)
    if item is None:
        raise ProtocolError(f"Item with id '{item_id}' does not exist.",
                            code="item_retrieve_invalid_item_id", param="item_id")
    shown = copy.deepcopy(item)
    audio = session.conversation.audio_of(item_id)
    if audio is not None:
        for part in shown.get("content") or []:
            if part.get("type") == "input_audio":
                part["audio"] = base64.b64encode(audio).decode()
                break
    session.emit({"type": "conversation.item.retrieved", "item": shown})


async def _truncate(session: RealtimeSession, ev: ClientEvent) -> None:
    data = ev.data
    session.conversation.truncate(data["item_id"], data["content_index"], data["audio_end_ms"])
    session.emit({"type": "conversation.item.truncated", "item_id": data["item_id"],
                  "content_index": data["content_index"], "audio_end_ms": data["audio_end_ms"]})


async def _delete(session: RealtimeSession, ev: ClientEvent) -> None:
    item_id = ev.data["item_id"]
    if not session.conversation.delete(item_id):
        raise ProtocolError(f"Error deleting item: the item with id '{item_id}' does not "
                            "exist.", code="item_delete_invalid_item_id", param="item_id")
    session.emit({"type": "conversation.item.deleted", "item_id": item_id})


async def _create_response(session: RealtimeSession, ev: ClientEvent) -> None:
    params = response_params(session, ev.data.get("response"))
    session.create_response(params, event_id=ev.event_id)


async def _cancel_response(session: RealtimeSession, ev: ClientEvent) -> None:
    active = session.active
    if active is None:
        raise ProtocolError("Cancellation failed: no active response found.",
                            code="response_cancel_not_active")
    wanted = ev.data.get("response_id")
    if wanted is not None and wanted != active.id:
        raise ProtocolError(f"Cancellation failed: response '{wanted}' is not active.",
                            code="response_cancel_not_active", param="response_id")
    session.cancel_response("client_cancelled")


def response_params(session: RealtimeSession, given: dict[str, Any] | None) -> ResponseParams:
    """The settings of one response: the session's, overridden by ``response.create``."""
    cfg = session.config
    r = given or {}
    out_cfg = cfg["audio"]["output"]
    audio_out = (r.get("audio") or {}).get("output") or {}
    modalities = r.get("output_modalities") or cfg["output_modalities"]
    if len(modalities) != 1:
        raise ProtocolError("output_modalities must be ['audio'] or ['text'], not both.",
                            param="response.output_modalities")
    conversation = r.get("conversation", "auto")
    if conversation not in ("auto", "none", session.conversation.id):
        raise ProtocolError(f"Unknown conversation '{conversation}'; use 'auto' or 'none'.",
                            param="response.conversation")
    max_tokens = r.get("max_output_tokens", cfg["max_output_tokens"])
    if isinstance(max_tokens, int) and not 1 <= max_tokens <= 4096:
        raise ProtocolError("max_output_tokens must be 1-4096 or 'inf'.",
                            param="response.max_output_tokens")
    items = None
    if "input" in r:
        items = []
        for index, entry in enumerate(r["input"]):
            if entry.get("type") == "item_reference":
                found = session.conversation.get(entry["id"])
                if found is None:
                    raise ProtocolError(f"Item with id '{entry['id']}' does not exist.",
                                        param=f"response.input[{index}].id")
                items.append(copy.deepcopy(found))
            else:
                items.append(normalize_item(entry)[0])
    return ResponseParams(
        instructions=r["instructions"] if "instructions" in r else cfg["instructions"],
        tools=r["tools"] if "tools" in r else cfg["tools"],
        tool_choice=r.get("tool_choice", cfg["tool_choice"]),
        voice=audio_out.get("voice", out_cfg["voice"]),
        speed=float(out_cfg.get("speed") or 1.0),
        max_output_tokens=max_tokens,
        output_modalities=list(modalities),
        audio_format=audio_out.get("format") or out_cfg["format"],
        in_conversation=conversation != "none",
        input=items,
        metadata=r.get("metadata"),
    )


_HANDLERS: dict[str, Handler] = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": _commit,
    "input_audio_buffer.clear": _clear_input,
    "output_audio_buffer.clear": _clear_output,
    "conversation.item.create": _create_item,
    "conversation.item.retrieve": _retrieve,
    "conversation.item.truncate": _truncate,
    "conversation.item.delete": _delete,
    "response.create": _create_response,
    "response.cancel": _cancel_response,
}
