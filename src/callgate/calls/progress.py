"""Call-progress webhooks that OpenAI has no event for, in the same envelope as
``realtime.call.incoming`` (so the ``openai`` SDK's ``webhooks.unwrap`` accepts them).

Types: ``realtime.call.ringing`` (the callee is alerted: 180/183), ``realtime.call.answered``
(the callee answered; the session is starting), ``realtime.call.failed`` (no answer: the SIP
status and reason, or none when nothing came back) and ``realtime.call.ended``.

A transfer (``/refer``, any call) reports how it goes: ``realtime.call.transfer_progress`` for
the peer's answer to the REFER and each provisional sipfrag in its NOTIFYs (100, 180 …),
then ``realtime.call.transferred`` (a 2xx sipfrag: the call ends) or
``realtime.call.transfer_failed`` (the REFER refused or unanswered, a 3xx-6xx sipfrag, or no
final NOTIFY within ``refer_timeout``: the call stays up).
"""

from __future__ import annotations

import uuid
from typing import Any

RINGING = "realtime.call.ringing"
ANSWERED = "realtime.call.answered"
FAILED = "realtime.call.failed"
ENDED = "realtime.call.ended"
TRANSFER_PROGRESS = "realtime.call.transfer_progress"
TRANSFERRED = "realtime.call.transferred"
TRANSFER_FAILED = "realtime.call.transfer_failed"


def progress_event(kind: str, call_id: str, now: float, **data: Any) -> dict[str, Any]:
    return {"object": "event", "id": f"evt_{uuid.uuid4().hex}", "type": kind,
            "created_at": int(now), "data": {"call_id": call_id, **data}}
