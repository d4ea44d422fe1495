"""Bearer-key authentication for the REST API (and the WebSocket handshake, which reuses it).

Clients written for OpenAI send ``Authorization: Bearer <key>`` (RFC 6750 §2.1); callgate
compares the key with ``CALLGATE_API_KEY`` in constant time. With no key configured every
request is let through: that mode is for local use only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from callgate.api.errors import ApiError

_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer $CALLGATE_API_KEY")


def bearer_matches(api_key: str | None, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` (always, if no key is set)."""
    if api_key is None:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    # RFC 7235 §2.1: the auth-scheme is case-insensitive.
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def unauthorized() -> ApiError:
    # RFC 6750 §3: a 401 names the scheme the client should use.
    return ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                    "with the key callgate was configured with (CALLGATE_API_KEY).",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_api_key(api_key: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that admits only requests bearing ``api_key``.

    It declares the HTTP bearer security scheme, so the OpenAPI document says how to
    authenticate; the check itself reads the raw header so that it matches
    :func:`bearer_matches` exactly.
    """

    async def check(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)],
    ) -> None:
        if not bearer_matches(api_key, request.headers.get("authorization")):
            raise unauthorized()

    return check
