"""The ``realtime.call.incoming`` webhook: the event, its Standard Webhooks signature, delivery.

The body and headers match what OpenAI sends (openai-wire.md §1), so a receiver written for
OpenAI verifies callgate's deliveries with ``openai.OpenAI(webhook_secret=...).webhooks.unwrap``
unchanged. Delivery runs on the event loop without ever blocking it: a receiver commonly
calls ``/accept`` on our REST API *inside* its webhook handler, before it answers 200.

When no receiver takes the event, :attr:`Delivery.sip_status` says how the ringing call is
to be answered at once rather than after the whole accept timeout: ``480`` (Temporarily
Unavailable) when a receiver answered and refused it (any final 4xx, such as 410 Gone: the
application is there and says no), ``503`` with Retry-After when none could be reached
(connection refused ``CONNECT_ATTEMPTS`` times in a row, an unusable URL, or the delivery
deadline passed: the caller's proxy may try another gateway).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from callgate import __version__
from callgate.log import event as event_log
from callgate.observe.events import CallObserver, WebhookAttempt

logger = logging.getLogger(__name__)

INCOMING_EVENT = "realtime.call.incoming"
SECRET_PREFIX = "whsec_"
# INVITE headers never passed on: the caller's credentials (openai-wire.md §1, SDK3 docs).
_DROPPED_HEADERS = frozenset({"authorization", "proxy-authorization"})
_MAX_RESPONSE_READ = 64 * 1024
# Attempt failures that another try would only repeat.
_FINAL_ERRORS = frozenset({"invalid_url", "unexpected"})
# A receiver that refused the connection this many times in a row is down, not busy.
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Delivery:
    """How delivering one event went: ``delivered`` by any receiver, else why not (per URL
    the last reason: refused, unreachable, deadline or stopped). True when delivered."""

    delivered: bool
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.delivered

    @property
    def sip_status(self) -> int | None:
        """The status to end the ringing call with now (module docstring), or None: it was
        delivered, or delivery stopped because the call stopped ringing."""
        if self.delivered or not self.reasons or "stopped" in self.reasons:
            return None
        return 480 if "refused" in self.reasons else 503


def build_incoming_event(call_id: str, sip_headers: Iterable[tuple[str, str]], *,
                         media_security: str | None = None, now: float) -> dict[str, Any]:
    """The ``realtime.call.incoming`` event for a ringing call.

    ``sip_headers`` are the INVITE's headers in order, repeats kept; the authorization
    headers are left out. ``media_security`` (``"rtp"``/``"srtp"``) is included only when
    known, as OpenAI does.
    """
    data: dict[str, Any] = {
        "call_id": call_id,
        "sip_headers": [{"name": name, "value": value} for name, value in sip_headers
                        if name.lower() not in _DROPPED_HEADERS],
    }
    if media_security is not None:
        data["sip_media_security"] = media_security
    return {"object": "event", "id": f"evt_{uuid.uuid4().hex}", "type": INCOMING_EVENT,
            "created_at": int(now), "data": data}


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key for ``secret``, decoded the way the ``openai`` SDK decodes it.

    A ``whsec_`` secret is base64 after the prefix; any other secret is used as its raw UTF-8
    bytes (the SDK's rule; the standardwebhooks library would base64-decode it instead, so
    only ``whsec_`` secrets verify with both). Raises ValueError for invalid base64.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook secret: invalid base64 after 'whsec_'") from exc
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- retry policy (pure) ----------------------------------------------------------------------

Verdict = Literal["delivered", "retry", "give_up"]


def classify(status: int) -> Verdict:
    """What an HTTP answer means for a delivery: any 2xx acknowledges it.

    Server errors, 408 and 429 are worth another try; any other answer (a 4xx, or a
    redirect, which is not followed: the signature binds the body, not the URL) is final.
    """
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in (408, 429):
        return "retry"
    return "give_up"


def backoff(attempt: int, initial: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(cap, initial * 2 ** (attempt - 1)))


def _retry_after(value: str | None, now: float) -> float | None:
    # RFC 9110 §10.2.3: delay-seconds or an HTTP-date.
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _redact(url: str) -> str:
    # Webhook URLs may carry tokens in the query or userinfo: log only where it goes.
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


# --- delivery ---------------------------------------------------------------------------------


class WebhookSender:
    """Delivers events to every configured URL, signed, with retries while they matter.

    Each URL is tried independently and concurrently. An attempt is bounded by ``timeout``;
    a failed attempt (5xx, 408, 429, timeout, connection error) is retried after an
    exponential backoff for as long as ``keep_trying()`` is true and ``max_elapsed`` has not
    passed, so ``deliver`` returns within ``max_elapsed`` seconds whatever the receivers do.
    ``keep_trying`` is the caller's "is the call still ringing?".
    """

    def __init__(self, urls: list[str], secret: str | None, *, timeout: float,
                 client: httpx.AsyncClient | None = None, initial_backoff: float = 0.25,
                 max_backoff: float = 2.0, max_elapsed: float = 60.0,
                 observer: CallObserver | None = None) -> None:
        if secret is not None:
            signing_key(secret)  # a bad secret is a configuration error: fail at startup
        self.urls = list(urls)
        self.secret = secret
        self.timeout = timeout
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_elapsed = max_elapsed
        self.observer = observer
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def deliver(self, event: dict[str, Any], *,
                      keep_trying: Callable[[], bool]) -> Delivery:
        """POST ``event`` to every URL; delivered once any of them acknowledged it (2xx).

        Returns when every URL has acknowledged, refused, or run out of reasons to retry.
        Never raises (cancellation excepted); outcomes are logged with the call id.
        """
        if not self.urls:
            return Delivery(False)
        data = event.get("data")
        call_id = data.get("call_id") if isinstance(data, dict) else None
        try:
            # ASCII-only JSON: a header value that is not valid UTF-8 cannot break encoding.
            body = json.dumps(event, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            event_log(logger, "webhook.unserializable", logging.ERROR, call_id=call_id,
                      error=repr(exc))
            return Delivery(False)
        # One delivery id for every attempt of this event: the receiver's idempotency key.
        webhook_id = f"wh_{uuid.uuid4().hex}"
        deadline = asyncio.get_running_loop().time() + self.max_elapsed
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._deliver_to(url, body, webhook_id, call_id,
                                                        keep_trying, deadline))
                     for url in self.urls]
        results = [task.result() for task in tasks]
        if any(result is None for result in results):
            return Delivery(True)
        return Delivery(False, tuple(r for r in results if r is not None))

    async def _deliver_to(self, url: str, body: bytes, webhook_id: str, call_id: str | None,
                          keep_trying: Callable[[], bool], deadline: float) -> str | None:
        """None once delivered; else why it was not (refused, unreachable, deadline,
        stopped)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = refusals = 0
        reason = "stopped"
        while True:
            attempt += 1
            budget = min(self.timeout, deadline - loop.time())
            status, retry_after, error = await self._attempt(url, body, webhook_id, budget)
            verdict: Verdict = classify(status) if status is not None else "retry"
            elapsed_ms = round((loop.time() - started) * 1000)
            if verdict == "delivered":
                event_log(logger, "webhook.delivered", call_id=call_id, url=_redact(url),
                      webhook_id=webhook_id, status=status, attempts=attempt,
                      elapsed_ms=elapsed_ms)
                self._report(WebhookAttempt(True, loop.time() - started))
                return None
            event_log(logger, "webhook.attempt_failed", logging.DEBUG, call_id=call_id,
                  url=_redact(url), attempt=attempt, status=status, error=error)
            refusals = refusals + 1 if error == "ConnectError" else 0
            if verdict == "give_up":
                reason = "refused"
                break
            if error in _FINAL_ERRORS or refusals >= CONNECT_ATTEMPTS:
                reason = "unreachable"
                break
            delay = backoff(attempt, self.initial_backoff, self.max_backoff)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff))
            if not _still(keep_trying):
                reason = "stopped"
                break
            if loop.time() + delay >= deadline:
                reason = "deadline"
                break
            await asyncio.sleep(delay)
            if not _still(keep_trying):
                reason = "stopped"
                break
        event_log(logger, "webhook.failed", logging.WARNING, call_id=call_id, url=_redact(url),
              webhook_id=webhook_id, reason=reason, status=status, error=error,
              attempts=attempt, elapsed_ms=round((loop.time() - started) * 1000))
        self._report(WebhookAttempt(False, loop.time() - started, reason))
        return reason

    def _report(self, attempt: WebhookAttempt) -> None:
        if self.observer is not None:
            self.observer.call_event(attempt)

    async def _attempt(self, url: str, body: bytes, webhook_id: str,
                       budget: float) -> tuple[int | None, float | None, str | None]:
        """One POST: (status, Retry-After seconds, error) with status None on failure."""
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": f"callgate/{__version__}",
                   "webhook-id": webhook_id, "webhook-timestamp": str(timestamp)}
        if self.secret is not None:
            headers["webhook-signature"] = sign(self.secret, webhook_id, timestamp, body)
        try:
            # httpx's timeout bounds each network operation; asyncio.timeout bounds the total.
            async with asyncio.timeout(max(budget, 0.001)), self._client.stream(
                    "POST", url, content=body, headers=headers,
                    timeout=httpx.Timeout(max(budget, 0.001))) as response:
                # Read a little of the answer so the connection can be reused, never all.
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= _MAX_RESPONSE_READ:
                        break
                return (response.status_code,
                        _retry_after(response.headers.get("retry-after"), time.time()), None)
        except (TimeoutError, httpx.TimeoutException):
            return None, None, "timeout"
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            return None, None, "invalid_url"
        except httpx.HTTPError as exc:
            return None, None, type(exc).__name__
        except Exception as exc:  # never let one receiver break delivery to the others
            event_log(logger, "webhook.unexpected_error", logging.ERROR, url=_redact(url),
                  error=repr(exc))
            return None, None, "unexpected"


def _still(keep_trying: Callable[[], bool]) -> bool:
    try:
        return bool(keep_trying())
    except Exception as exc:
        event_log(logger, "webhook.keep_trying_failed", logging.ERROR, error=repr(exc))
        return False
