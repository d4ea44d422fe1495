"""Any node answers for any call: requests about a call another node owns go to that node.

REST call control is proxied over HTTP; a ``?call_id=`` Realtime WebSocket is relayed frame by
frame both ways. The owner does the work, so its own idempotency makes a retried verb that
lands on another node still one verb, and its webhook is the only one sent. A forwarded
request carries ``X-Callgate-Forwarded`` and is never forwarded again: registries that
disagree for a moment cost a 404, never a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from callgate.cluster.registry import CallRegistry, RegistryUnavailable
from callgate.log import event

logger = logging.getLogger("callgate.cluster")

FORWARDED = "x-callgate-forwarded"
_CALL_PATH = re.compile(r"^/v1/realtime/calls/([^/]+)/[a-z]+$")
# Request headers the owner needs; hop-by-hop and length headers are httpx's business.
_PASS_REQUEST = ("authorization", "content-type", "idempotency-key", "openai-beta")
_PASS_RESPONSE = ("content-type", "x-should-retry", "retry-after")


def error_body(message: str, code: str, *, type_: str = "invalid_request_error",
               param: str | None = "call_id") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class Forwarder:
    def __init__(self, registry: CallRegistry, is_local: Callable[[str], bool], *,
                 max_body: int, timeout: float = 30.0) -> None:
        self.registry = registry
        self.is_local = is_local
        self.max_body = max_body
        self.http = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _route(self, call_id: str) -> tuple[str | None, JSONResponse | None]:
        """The owner's base URL, or the answer to give instead; (None, None): serve here."""
        try:
            owner = await self.registry.owner(call_id)
        except RegistryUnavailable as exc:
            return None, JSONResponse(error_body(
                f"Call {call_id} is not on this node, and the cluster registry cannot be "
                f"reached to find its node ({exc}).", "cluster_unavailable",
                type_="server_error"), status_code=503)
        if owner is None or owner.node == self.registry.node_id:
            return None, None
        if not owner.alive:
            return None, JSONResponse(error_body(
                f"Call {call_id} was on node {owner.node}, which has stopped; the call is over.",
                "call_gone"), status_code=410)
        return owner.url, None

    # -- REST -------------------------------------------------------------------------------

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Starlette HTTP middleware: call-control requests for remote calls go to the owner."""
        match = _CALL_PATH.match(request.url.path)
        if (match is None or request.method != "POST" or FORWARDED in request.headers
                or self.is_local(match.group(1))
                or int(request.headers.get("content-length") or 0) > self.max_body):
            return await call_next(request)  # the API answers it here (or refuses it: 413)
        call_id = match.group(1)
        url, answer = await self._route(call_id)
        if answer is not None:
            return answer
        if url is None:
            return await call_next(request)
        headers = {k: v for k, v in request.headers.items() if k in _PASS_REQUEST}
        headers[FORWARDED] = self.registry.node_id
        try:
            upstream = await self.http.post(url + request.url.path, content=await request.body(),
                                            headers=headers)
        except httpx.HTTPError as exc:
            event(logger, "cluster.forward_failed", logging.WARNING, call_id=call_id, url=url,
                  error=repr(exc))
            return JSONResponse(error_body(
                f"The node that owns call {call_id} did not answer: {exc!r}.",
                "owner_unreachable", type_="server_error"), status_code=503)
        event(logger, "cluster.forwarded", logging.DEBUG, call_id=call_id, url=url,
              status=upstream.status_code)
        return Response(upstream.content, status_code=upstream.status_code,
                        headers={k: v for k, v in upstream.headers.items()
                                 if k in _PASS_RESPONSE})

    # -- the Realtime WebSocket ---------------------------------------------------------------

    async def relay(self, websocket: WebSocket, call_id: str) -> bool:
        """Relay ``websocket`` (not yet accepted) to the owner of ``call_id``; False when no
        other node owns it, so the caller answers it as a local unknown call."""
        if FORWARDED in websocket.headers:
            return False
        url, answer = await self._route(call_id)
        if answer is not None:
            await _deny(websocket, answer)
            return True
        if url is None:
            return False
        headers = {k: v for k, v in websocket.headers.items() if k in _PASS_REQUEST}
        headers[FORWARDED] = self.registry.node_id
        offered = [Subprotocol(str(p)) for p in websocket.scope.get("subprotocols") or []]
        target = re.sub(r"^http", "ws", url) + f"/v1/realtime?call_id={call_id}"
        try:
            upstream = await connect(target, additional_headers=headers,
                                     subprotocols=offered or None, max_size=None,
                                     open_timeout=10)
        except InvalidStatus as exc:
            body = exc.response.body or b""
            await _deny(websocket, Response(body, status_code=exc.response.status_code,
                                            media_type="application/json"))
            return True
        except (TimeoutError, OSError) as exc:
            await _deny(websocket, JSONResponse(error_body(
                f"The node that owns call {call_id} did not answer: {exc!r}.",
                "owner_unreachable", type_="server_error"), status_code=503))
            return True
        event(logger, "cluster.ws_relayed", call_id=call_id, url=url)
        async with upstream:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await _pipe(websocket, upstream, call_id)
        return True


async def _pipe(websocket: WebSocket, upstream: ClientConnection, call_id: str) -> None:
    async def down() -> None:
        async for frame in upstream:
            if isinstance(frame, str):
                await websocket.send_text(frame)
            else:
                await websocket.send_bytes(frame)

    async def up() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            await upstream.send(data if data is not None else message.get("bytes") or b"")

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
                result, ConnectionClosed | WebSocketDisconnect | asyncio.CancelledError):
            event(logger, "cluster.ws_relay_error", logging.WARNING, call_id=call_id,
                  error=repr(result))
    if websocket.client_state is WebSocketState.CONNECTED:
        # The owner's close code and reason reach the client unchanged.
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await websocket.close(code, upstream.close_reason or "")
    await upstream.close()


async def _deny(websocket: WebSocket, response: Response) -> None:
    event(logger, "cluster.ws_refused", status=response.status_code,
          detail=json.loads(bytes(response.body) or b"{}").get("error", {}).get("code"))
    await websocket.send_denial_response(response)
