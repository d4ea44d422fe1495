"""The Realtime session: GA protocol, conversation, turn-taking, barge-in and tool calls.

Independent of SIP: a phone call plugs in through :class:`AudioOutput` and
:meth:`RealtimeSession.feed_audio`; the WebSocket endpoint through :meth:`subscribe` and
:meth:`handle_client_event`.
"""

from callgate.engines.vad import VoiceActivity
from callgate.realtime.protocol import MAX_EVENT_BYTES, ProtocolError, validate_session
from callgate.realtime.registry import SessionRegistry
from callgate.realtime.responses import AudioOutput
from callgate.realtime.session import RealtimeSession
from callgate.realtime.session_config import check_engine
from callgate.realtime.subscribers import Subscription

__all__ = [
    "MAX_EVENT_BYTES",
    "AudioOutput",
    "ProtocolError",
    "RealtimeSession",
    "SessionRegistry",
    "Subscription",
    "VoiceActivity",
    "check_engine",
    "validate_session",
]
