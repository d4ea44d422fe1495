"""Property-based fuzzing of the REST API against its own OpenAPI document (schemathesis).

Every generated request, valid or deliberately invalid, must get a documented status with a
body matching the documented schema, never a 5xx; schema-valid requests must be accepted and
schema-invalid ones rejected, so the document and the validation cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from callgate.api.app import create_app
from callgate.calls.control import CallNotFound, CallStateConflict
from callgate.config import ModelRoute, Settings

API_KEY = "sk-fuzz"


class ShardedControl:
    """Succeeds, or fails as an unknown call or a state conflict, depending on the id, so the
    fuzzer meets every documented answer."""

    def __init__(self) -> None:
        self.seen = 0

    def _check(self, call_id: str) -> None:
        self.seen += 1
        if len(call_id) % 3 == 1:
            raise CallNotFound(f"No call with id '{call_id}'.")
        if len(call_id) % 3 == 2:
            raise CallStateConflict("The call has already ended.")

    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        self._check(call_id)

    async def reject(self, call_id: str, status_code: int) -> None:
        self._check(call_id)

    async def refer(self, call_id: str, target_uri: str) -> None:
        self._check(call_id)

    async def hangup(self, call_id: str) -> None:
        self._check(call_id)

    async def dial(self, session: dict[str, Any], transport: dict[str, Any]) -> dict[str, Any]:
        self.seen += 1
        return {"id": "rtc_fuzz", "object": "realtime.call", "status": "dialing",
                "direction": "outbound", "destination": transport["destination"],
                "trunk": None, "created_at": 0}

    def trunks(self) -> list[dict[str, Any]]:
        return [{"name": "carrier", "address": "sip:carrier.example", "registers": True,
                 "state": "registered", "expires": 300, "failures": 0,
                 "public_address": "192.0.2.10:5060"}]


CONTROL = ShardedControl()
APP = create_app(Settings(api_key=API_KEY, api_docs=True,
                          models={"support-bot": ModelRoute(engine="echo")}), CONTROL)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP,
                                        headers={"Authorization": f"Bearer {API_KEY}"})


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})


def test_the_fuzzer_reached_the_call_layer() -> None:
    # Guards against a schema or auth mistake that would make every request fail early.
    assert CONTROL.seen > 0
