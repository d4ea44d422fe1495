"""Call-progress webhooks that OpenAI has no event for, in the same envelope as
``realtime.call.incoming`` (so the ``openai`` SDK's ``webhooks.unwrap`` accepts them).

Types: ``realtime.call.ringing`` (the callee is alerted: 180/183), ``realtime.call.answered``
(the callee answered; the session is starting), ``realtime.call.failed`` (no answer: the SIP
status and reason, or none when nothing came back) and ``realtime.call.ended``.
"""

from __future__ import annotations

import uuid
from typing import Any

RINGING = "realtime.call.ringing"
ANSWERED = "realtime.call.answered"
FAILED = "realtime.call.failed"
ENDED = "realtime.call.ended"


def progress_event(kind: str, call_id: str, now: float, **data: Any) -> dict[str, Any]:
    return {"object": "event", "id": f"evt_{uuid.uuid4().hex}", "type": kind,
            "created_at": int(now), "data": {"call_id": call_id, **data}}
