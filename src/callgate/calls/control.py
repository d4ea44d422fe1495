"""The call-control verbs the REST API exposes, and the errors they raise.

The API layer maps each error to OpenAI's error shape; the call layer implements the verbs.
Every verb is idempotent: the ``openai`` SDK retries on 408/409/429/5xx, so replaying a verb
that already took effect succeeds rather than failing.
"""

from __future__ import annotations

from typing import Any, Protocol


class CallError(Exception):
    """A call-control request that cannot be carried out; ``http_status`` says why."""

    http_status = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class CallNotFound(CallError):
    http_status = 404
    code = "call_not_found"


class CallStateConflict(CallError):
    """The call is in a state where the verb no longer applies (e.g. accept after hangup)."""

    http_status = 409
    code = "call_state_conflict"


class InvalidCallRequest(CallError):
    http_status = 400
    code = "invalid_value"


class CallControl(Protocol):
    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        """Answer the ringing call with 200 OK and start the realtime session ``session``."""

    async def reject(self, call_id: str, status_code: int) -> None:
        """Answer the ringing call with a final SIP status (4xx-6xx)."""

    async def refer(self, call_id: str, target_uri: str) -> None:
        """Send SIP REFER with ``Refer-To: target_uri`` on the established call."""

    async def hangup(self, call_id: str) -> None:
        """End the call: BYE when established, a final error response while ringing."""

    async def dial(self, session: dict[str, Any], transport: dict[str, Any]) -> dict[str, Any]:
        """Place an outbound call (``transport`` as in ``POST /v1/realtime/calls``); returns
        the call resource, status ``dialing``."""

    def trunks(self) -> list[dict[str, Any]]:
        """Each configured trunk and the state of its registration."""
