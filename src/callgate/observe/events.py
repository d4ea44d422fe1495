"""The events a call reports to whoever watches it, and the seam they go through.

This module imports nothing from the layers, so any of them may report: the call layer says
when a call starts, changes state, is answered or refused, the webhook sender how a delivery
went, an engine supervisor when it restarted a worker. What a live call says after it is
answered (transcripts, turn timelines, media quality) is read from the realtime session and
the media stream the :class:`CallAnswered` event hands over, so those layers need no hook.

An observer must be cheap and must not raise into the caller: :class:`Observers` fans an
event out and logs, rather than propagates, any observer's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from callgate.media.formats import AudioFormat

logger = logging.getLogger(__name__)


class MediaView(Protocol):
    """What the observers read of a call's media stream (``MediaStream`` is one)."""

    @property
    def stats(self) -> dict[str, Any]: ...

    @property
    def audio_format(self) -> AudioFormat | None: ...

    @property
    def on_audio(self) -> Callable[[bytes], None] | None: ...

    @on_audio.setter
    def on_audio(self, callback: Callable[[bytes], None] | None) -> None: ...

    def send_audio(self, pcm: bytes, *, flush: bool = False) -> None: ...

    def clear_output(self) -> int: ...


class SessionView(Protocol):
    """What the observers read of a call's realtime session (``RealtimeSession`` is one)."""

    timelines: Any  # recent turns' latency stamps: dicts with ``response_id`` and ``*_ms``

    def subscribe(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A new call: an INVITE arrived (inbound) or one was sent (outbound)."""

    call_id: str
    sip_call_id: str
    direction: str  # "inbound" | "outbound"
    from_uri: str
    to_uri: str
    at: float  # wall clock, seconds
    state: str
    trunk: str | None = None


@dataclass(frozen=True, slots=True)
class CallStateChanged:
    call_id: str
    old: str
    new: str
    reason: str
    at: float
    final: bool


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """200 OK sent and the session running: from here the observers watch the call live."""

    call_id: str
    model: str
    codec: str | None
    at: float
    media: MediaView = field(repr=False)
    session: SessionView = field(repr=False)
    audio: AudioFormat = field(repr=False)  # what the engine hears and says on the line


@dataclass(frozen=True, slots=True)
class CallSetupFailed:
    """A call that got a final error status to its INVITE (rejected, cancelled, timed out)."""

    call_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallRefused:
    """An INVITE turned away before it became a call: over a limit, or not acceptable."""

    status: int
    reason: str  # a short fixed word (``max_calls``, ``invalid_request`` …): a metric label


@dataclass(frozen=True, slots=True)
class CallTransfer:
    """A step of a transfer (``/refer``): ``kind`` is the progress webhook's type."""

    call_id: str
    kind: str
    target_uri: str
    sip_status: int | None
    reason: str
    at: float  # wall clock, seconds


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One delivery of a webhook ended: delivered (``ok``), or given up for ``reason``."""

    ok: bool
    seconds: float
    reason: str = "delivered"


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    """An engine worker process died and was started again."""

    worker: str  # the stage it serves: stt, llm, tts


CallEvent = (CallStarted | CallStateChanged | CallAnswered | CallSetupFailed | CallRefused
             | CallTransfer | WebhookAttempt | WorkerRestarted)


class CallObserver(Protocol):
    def call_event(self, ev: CallEvent) -> None: ...


class Observers:
    """Fans events out to observers; one that fails is logged and the others still run."""

    def __init__(self, *observers: CallObserver) -> None:
        self.observers = list(observers)

    def add(self, observer: CallObserver) -> None:
        self.observers.append(observer)

    def call_event(self, ev: CallEvent) -> None:
        for observer in self.observers:
            try:
                observer.call_event(ev)
            except Exception:
                logger.exception("observer failed", extra={
                    "observer": type(observer).__name__, "event": type(ev).__name__,
                    "call_id": getattr(ev, "call_id", None)})
