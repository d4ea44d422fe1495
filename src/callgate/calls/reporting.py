"""The call layer's reports to the observers (metrics, records, console), built from a Call.

Kept apart from the call logic so that each place a call reports from stays one line.
"""

from __future__ import annotations

from callgate.calls.call import Call
from callgate.media.formats import AudioFormat
from callgate.observe.events import CallAnswered, CallStarted, MediaView, SessionView


def call_started(call: Call, direction: str, at: float, trunk: str | None = None) -> CallStarted:
    headers = call.invite.headers
    return CallStarted(call.id, call.sip_call_id, direction, _address(headers.get("From")),
                       _address(headers.get("To")), at, call.state.value, trunk)


def call_answered(call: Call, media: MediaView, session: SessionView, audio: AudioFormat,
                  at: float) -> CallAnswered:
    model = (call.config or {}).get("model")
    codec = call.negotiated.codec.name if call.negotiated is not None else None
    return CallAnswered(call.id, str(model or ""), codec, at, media, session, audio)


def _address(value: str | None) -> str:
    """The URI of a From/To header value, without display name or tag (what a list shows)."""
    text = (value or "").strip()
    if "<" in text and ">" in text:
        return text[text.index("<") + 1:text.index(">")]
    return text.split(";", 1)[0]
