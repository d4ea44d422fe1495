"""``GET /v1/realtime``: the Realtime WebSocket, as OpenAI serves it (openai-wire.md §3).

* ``?call_id=rtc_…`` attaches to a phone call's session (the "sideband"); ``model`` is then
  ignored. Several sockets may watch one call, and the call goes on when a socket drops.
* ``?model=…`` starts a standalone session whose audio travels over the socket; it ends
  with the socket.

Refusals happen at the handshake, before the upgrade, with an HTTP status and OpenAI's error
body: 401 for a missing/wrong key, 404 for an unknown or ended call, 400 for an unknown
model. Authentication is ``Authorization: Bearer <key>`` or, for browsers, which cannot set
headers, the ``openai-insecure-api-key.<key>`` subprotocol the Node SDK uses.

Frames are JSON text, one event each. Each socket has a reader (client events into the
session, errors back to this socket only) and a writer (the session's events out).

Limits: at most ``ws_max_per_call`` sockets on one call and ``ws_max_per_client`` from one
client address (429 at the handshake past either), and a frame nesting deeper than
``ws_max_json_depth`` is answered with an ``error`` event rather than parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from callgate.api.auth import bearer_matches, unauthorized
from callgate.api.errors import ApiError
from callgate.api.json_depth import nests_deeper_than
from callgate.config import Settings
from callgate.engines.base import Engine
from callgate.log import event
from callgate.realtime.protocol import ProtocolError
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.session import RealtimeSession
from callgate.realtime.subscribers import Subscription

logger = logging.getLogger(__name__)

EngineFactory = Callable[[str], Awaitable[Engine]]
# Relays a socket for a call another node owns; False when no node does.
Relay = Callable[[WebSocket, str], Awaitable[bool]]
KEY_SUBPROTOCOL = "openai-insecure-api-key."
CLOSE_NORMAL = 1000
CLOSE_TOO_SLOW = 1008  # policy violation: the client did not read its events


def make_realtime_router(registry: SessionRegistry, settings: Settings,
                         engine_factory: EngineFactory | None = None,
                         relay: Relay | None = None) -> APIRouter:
    """The router serving ``/v1/realtime``; standalone sessions get engines from
    ``engine_factory`` (default: the registry's, else ``callgate.engines.registry``)."""
    router = APIRouter()

    async def default_factory(model: str) -> Engine:
        from callgate.engines.registry import create_engine

        return await create_engine(model, settings)

    factory = engine_factory or registry.engine_factory or default_factory
    per_call: Counter[str] = Counter()
    per_client: Counter[str] = Counter()

    @router.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        offered = _subprotocols(websocket)
        if not _authorized(settings.api_key, websocket, offered):
            await _deny(websocket, unauthorized())
            return
        client = websocket.client.host if websocket.client else ""
        call_id = websocket.query_params.get("call_id")
        crowded = None
        if per_client[client] >= settings.ws_max_per_client:
            crowded = f"this client already has {settings.ws_max_per_client} WebSockets open"
        elif call_id and per_call[call_id] >= settings.ws_max_per_call:
            crowded = f"this call already has {settings.ws_max_per_call} WebSockets open"
        if crowded is not None:
            await _deny(websocket, ApiError(429, f"Too many connections: {crowded}.",
                                            code="too_many_connections"))
            return
        per_client[client] += 1
        if call_id:
            per_call[call_id] += 1
        try:
            await _attach(websocket, offered, call_id)
        finally:
            _release(per_client, client)
            if call_id:
                _release(per_call, call_id)

    async def _attach(websocket: WebSocket, offered: list[str], call_id: str | None) -> None:
        model = websocket.query_params.get("model")
        if call_id:
            found = registry.get(call_id)
            if found is None:
                if relay is not None and await relay(websocket, call_id):
                    return
                await _deny(websocket, ApiError(
                    404, "No session found for the provided call_id.", param="call_id",
                    code="call_id_not_found"))
                return
            session, standalone = found, False
        else:
            created = await _standalone(websocket, registry, settings, factory, model)
            if created is None:
                return
            session, standalone = created, True
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        sub = session.subscribe()
        event(logger, "realtime_ws_open", call_id=session.call_id,
              session_id=session.session_id, client=_peer(websocket))
        try:
            await _serve(websocket, session, sub, settings.ws_max_json_depth)
        finally:
            sub.close()
            if standalone:
                await registry.close_standalone(session, "socket closed")
            event(logger, "realtime_ws_closed", call_id=session.call_id,
                  session_id=session.session_id, overflowed=sub.overflowed)

    return router


async def _standalone(websocket: WebSocket, registry: SessionRegistry, settings: Settings,
                      factory: EngineFactory, model: str | None) -> RealtimeSession | None:
    if not model:
        await _deny(websocket, ApiError(400, "Missing required parameter: 'model' (or "
                                        "'call_id' to attach to a call).", param="model",
                                        code="missing_required_parameter"))
        return None
    if settings.resolve_model(model) is None:
        known = ", ".join(sorted(settings.model_routes))
        await _deny(websocket, ApiError(400, f"Unknown model '{model}'. Known models: {known}, "
                                        "and OpenAI realtime model names.", param="model",
                                        code="model_not_found"))
        return None
    try:
        return await registry.create_standalone(model, engine_factory=factory)
    except ValueError as exc:  # the engine registry's UnknownModel, a bad default session
        await _deny(websocket, ApiError(400, str(exc), param="model", code="model_not_found"))
    except Exception as exc:
        logger.exception("standalone session failed to start")
        await _deny(websocket, ApiError(500, f"The session could not start: {exc}",
                                        type="server_error", code="session_start_failed"))
    return None


def _release(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


async def _serve(websocket: WebSocket, session: RealtimeSession, sub: Subscription,
                 max_depth: int) -> None:
    async def read() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            if nests_deeper_than(text, max_depth):
                event(logger, "realtime_ws_too_deep", call_id=session.call_id,
                      limit=max_depth, client=_peer(websocket))
                sub.put(ProtocolError(f"The event nests deeper than {max_depth} levels.",
                                      code="invalid_json").to_event())
                continue
            await session.handle_client_event(data, sub)

    async def write() -> None:
        async for ev in sub:
            await websocket.send_text(json.dumps(ev, separators=(",", ":")))

    reader = asyncio.create_task(read())
    writer = asyncio.create_task(write())
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    if writer in done and websocket.client_state is WebSocketState.CONNECTED:
        # The session ended (the caller hung up) or this client fell too far behind.
        code, reason = ((CLOSE_TOO_SLOW, "client too slow: event queue overflowed")
                        if sub.overflowed else (CLOSE_NORMAL, "session ended"))
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)


def _subprotocols(websocket: WebSocket) -> list[str]:
    return [str(p) for p in websocket.scope.get("subprotocols") or []]


def _authorized(api_key: str | None, websocket: WebSocket, offered: list[str]) -> bool:
    if bearer_matches(api_key, websocket.headers.get("authorization")):
        return True
    assert api_key is not None  # bearer_matches admits everything when no key is set
    return any(p.startswith(KEY_SUBPROTOCOL) and
               hmac.compare_digest(p[len(KEY_SUBPROTOCOL):].encode(), api_key.encode())
               for p in offered)


async def _deny(websocket: WebSocket, error: ApiError) -> None:
    """Refuse the upgrade with an HTTP answer (ASGI WebSocket Denial Response extension)."""
    event(logger, "realtime_ws_refused", status=error.status, code=error.code,
          client=_peer(websocket))
    try:
        await websocket.send_denial_response(error.response())
    except RuntimeError:  # a server without the extension: it answers 403 itself
        await websocket.close(1008)


def _peer(websocket: WebSocket) -> str | None:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else None
