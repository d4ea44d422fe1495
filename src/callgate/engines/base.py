"""The seam between a realtime session and the voice AI that serves it.

A session owns turn-taking, the conversation and the protocol; an engine only listens and
talks. Two shapes fit behind one interface:

* cascade engines (``local``, ``openai-compatible``) are asked to ``transcribe`` a committed
  user turn and to ``respond`` to the conversation so far;
* duplex engines (``echo``, an upstream Realtime server) take every input frame through
  ``push_audio`` and speak on their own through ``events``; the session relays what they say.

Audio is PCM16 little-endian mono at ``Engine.sample_rate`` (24 kHz for the engines here, the
Realtime API's ``audio/pcm`` rate). On a phone line an engine may ask for another format through
:meth:`Engine.line_audio`: ``echo`` takes the codec's own audio, so G.711 passes through
untouched and nothing is resampled. Every stage a turn passes is stamped with ``Stage`` so
latency has one timeline (STYLE.md: one place per call knows the timeline of a turn).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from callgate.media.formats import AudioFormat


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """Part of the user's words, while transcription runs."""

    text: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    text: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Assistant output text: the transcript of its audio, or its text when audio is off."""

    text: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """Assistant speech, PCM16 mono at the engine's sample rate."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of a tool call's arguments, while the model writes them; the whole call follows
    as a :class:`ToolCall` with the same ``call_id``."""

    call_id: str
    name: str
    delta: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Stage:
    """A point on a turn's timeline: ``transcript_ready``, ``llm_first_token``,
    ``tts_first_audio`` ... ``at`` is ``time.monotonic()``."""

    name: str
    at: float


@dataclass(frozen=True, slots=True)
class ResponseDone:
    status: str = "completed"  # completed | incomplete | failed
    reason: str | None = None  # e.g. max_output_tokens
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineError:
    """A stage failed. ``stage`` is set when the process running it died (``stt``, ``llm``,
    ``tts``): the session then also sends an ``error`` event that names it."""

    message: str
    code: str = "engine_error"
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """A server event from an upstream Realtime server, passed to clients as it came."""

    event: dict[str, Any]


EngineEvent = (
    TranscriptDelta | TranscriptDone | TextDelta | AudioDelta | ToolCallDelta | ToolCall | Stage
    | ResponseDone
    | EngineError | RelayedEvent
)


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """Everything a cascade engine needs to produce one response.

    ``conversation`` holds GA conversation items as plain dicts (``message`` with
    ``input_text``/``input_audio`` (transcript)/``output_text``/``output_audio`` content,
    ``function_call``, ``function_call_output``), oldest first.
    """

    instructions: str
    conversation: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    voice: str | None = None
    speed: float = 1.0
    max_output_tokens: int | None = None
    output_modalities: tuple[str, ...] = ("audio",)


class Engine(ABC):
    """One instance per realtime session."""

    sample_rate: ClassVar[int] = 24000
    duplex: ClassVar[bool] = False
    # A duplex engine that answers each frame within push_audio (through attach): no queue
    # hop or task wake-up per frame, and the media stream plays out in the send phase of the
    # tick, so the answer to a frame leaves in the same tick's packet.
    inline: ClassVar[bool] = False
    # Input tokens the engine's language model takes (None: unknown); the session's
    # ``truncation`` keeps the conversation it sends within it.
    context_tokens: int | None = None

    async def start(self, session: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Called once with the session config before any audio flows."""

    def line_audio(self, codec: AudioFormat) -> AudioFormat:
        """The format this engine takes and gives a phone call's audio in, given the call
        codec's own (``codec_format``); the media stream converts between the two, and only
        where they differ. Called when the call's media is set up and on every re-INVITE."""
        return AudioFormat.pcm(self.sample_rate)

    def attach(self, deliver: Callable[[EngineEvent], None]) -> None:
        """Inline duplex engines (``inline``): hand each event to ``deliver`` from within
        ``push_audio`` instead of through :meth:`events`."""
        raise NotImplementedError(f"{type(self).__name__} does not answer inline")

    def unsupported(self, session: dict[str, Any]) -> tuple[str, str] | None:
        """A setting of ``session`` (the GA session object) this engine cannot carry out, as
        (dotted GA path, why), or None. The session refuses such a setting with an error that
        names it, instead of accepting it and carrying on without it."""
        return None

    def stages(self) -> dict[str, str]:
        """What runs each stage, for the start-up log; empty where there are none."""
        return {}

    async def update(self, session: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """The session config changed (``session.update``)."""

    def push_audio(self, pcm: bytes) -> None:
        """Duplex engines: one frame of caller audio."""
        raise NotImplementedError(f"{type(self).__name__} is not a duplex engine")

    def events(self) -> AsyncIterator[EngineEvent]:
        """Duplex engines: what the engine says on its own, until it closes."""
        raise NotImplementedError(f"{type(self).__name__} is not a duplex engine")

    @abstractmethod
    def transcribe(self, pcm: bytes) -> AsyncIterator[TranscriptDelta | TranscriptDone | Stage
                                                      | EngineError]:
        """Transcribe one committed user turn."""

    @abstractmethod
    def respond(self, request: ResponseRequest) -> AsyncIterator[EngineEvent]:
        """Produce one response; the caller cancels it by closing the iterator (``aclose``)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release models, sockets and workers."""
