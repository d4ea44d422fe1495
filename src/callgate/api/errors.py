"""Every failure the HTTP API reports, in OpenAI's error shape.

``{"error": {"message", "type", "param", "code"}}`` is what the ``openai`` SDK unpacks into
``APIStatusError`` (openai-wire.md §6), so call-control errors, request validation errors,
unknown routes, wrong methods, oversized bodies and unexpected exceptions all answer in it,
and no stack trace ever reaches a client.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callgate.calls.control import CallError
from callgate.log import event

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.status == 409:
            # The openai SDK retries 409 unless told not to; a state conflict will not heal.
            headers["x-should-retry"] = "false"
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit; FastAPI passes HTTPExceptions through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes.")


# --- request validation -> one OpenAI-style error -------------------------------------------


def _format_path(parts: Sequence[str | int]) -> str | None:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


def _param_parts(loc: Sequence[Any], body: Any, *, missing: bool) -> list[str | int]:
    """The JSON path an error points at, with pydantic's union-member labels left out.

    pydantic inserts the name of each union member it tried (``str``, ``VoiceId``, a
    discriminator tag ...) into ``loc``; walking the submitted document tells real keys and
    indexes from those labels.
    """
    parts: list[str | int] = []
    node = body
    for index, item in enumerate(loc):
        is_key = isinstance(node, dict) and isinstance(item, str) and item in node
        is_index = isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node)
        if is_key or is_index:
            parts.append(item)
            node = node[item]
        elif missing and index == len(loc) - 1:
            parts.append(item)
    return parts


def validation_error(errors: Sequence[Mapping[str, Any]], body: Any) -> ApiError:
    """Turn FastAPI/pydantic validation errors into the one 400 the client is shown."""
    best: tuple[int, Mapping[str, Any], list[str | int]] | None = None
    for err in errors:
        loc = list(err.get("loc", ()))
        where = loc[0] if loc else None
        if where in ("body", "path", "query", "header"):
            loc = loc[1:]
        # A query, path or header parameter is named as it is; only a body needs walking.
        parts = (list(loc[:1]) if where in ("path", "query", "header") else
                 _param_parts(loc, body, missing=err.get("type") == "missing"))
        if best is None or len(parts) > best[0]:
            best = (len(parts), err, parts)
    if best is None:
        return ApiError(400, "Invalid request.")
    _, err, parts = best
    kind = str(err.get("type", ""))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ").rstrip(".")
    ctx = err.get("ctx") or {}
    param = _format_path(parts)
    if kind == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {ctx.get('error', msg)}.",
                        code="invalid_json")
    if param is None:
        if kind == "missing":
            return ApiError(400, "A JSON object request body is required.",
                            code="missing_required_parameter")
        return ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unknown parameter: '{param}'.", param=param,
                        code="unknown_parameter")
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        param = f"{param}.{str(ctx.get('discriminator', 'type')).strip(chr(39))}"
        if kind == "union_tag_not_found":
            return ApiError(400, f"Missing required parameter: '{param}'.", param=param,
                            code="missing_required_parameter")
        return ApiError(400, f"Invalid value for '{param}': {msg}.", param=param,
                        code="invalid_value")
    if kind.endswith(("_type", "_parsing")):
        return ApiError(400, f"Invalid type for '{param}': {msg}.", param=param,
                        code="invalid_type")
    return ApiError(400, f"Invalid value for '{param}': {msg}.", param=param,
                    code=_range_code(kind, err.get("input")))


def _range_code(kind: str, value: Any) -> str:
    number = "integer" if isinstance(value, int) and not isinstance(value, bool) else "decimal"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{number}_below_min_value"
    if kind in ("less_than", "less_than_equal"):
        return f"{number}_above_max_value"
    return "invalid_value"


# --- handlers ---------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI, *,
                           check_auth: Callable[[Request], ApiError | None]) -> None:
    """Answer every handled failure in OpenAI's shape.

    ``check_auth`` (the authentication error for a request, or None) is consulted before a
    validation error is reported: FastAPI parses the JSON body before it runs dependencies,
    and an unauthenticated client must see 401, not a remark about its body.
    """

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_call_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CallError)
        event(logger, "api.call_error", call_id=request.path_params.get("call_id"),
              path=request.url.path, status=exc.http_status, code=exc.code, reason=exc.message)
        return ApiError(exc.http_status, exc.message, type=exc.error_type, param=exc.param,
                        code=exc.code).response()

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        auth_error = check_auth(request)
        if auth_error is not None:
            return auth_error.response()
        return validation_error(exc.errors(), exc.body).response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            message = f"Invalid URL ({method} {path})."
        elif exc.status_code == 405:
            message = f"Method {method} is not allowed for {path}."
        else:
            message = str(exc.detail)
        return ApiError(exc.status_code, message, headers=exc.headers).response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(CallError, on_call_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)


class ErrorGuard:
    """ASGI middleware: bounds request bodies and turns unexpected exceptions into a 500.

    Starlette's own last-resort handler answers in plain text and re-raises; this one logs
    the traceback and answers in OpenAI's shape, as long as no response has started yet.
    """

    def __init__(self, app: ASGIApp, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await _send(send, ApiError(413, f"The request body exceeds {self.max_body} bytes."))
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception as exc:
            event(logger, "api.internal_error", logging.ERROR, path=scope.get("path"),
                  error=repr(exc), traceback=traceback.format_exc())
            if started:
                raise
            await _send(send, ApiError(500, "The server had an error while processing your "
                                       "request.", type="server_error", code="internal_error"))


async def _send(send: Send, error: ApiError) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
