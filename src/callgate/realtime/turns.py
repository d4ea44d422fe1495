"""Turn detection: when the caller starts and stops speaking, and when a silence is too long.

Sans-IO: :meth:`TurnDetector.feed` takes caller audio (PCM16 24 kHz) and returns what
happened in it. Time is the position in the input audio stream, in milliseconds since the
session started, which is exactly the clock the ``audio_start_ms``/``audio_end_ms`` fields of
the Realtime events use; a phone line delivers a frame every 20 ms (concealment fills losses),
so audio time is wall time there.

``server_vad`` follows OpenAI's parameters: speech starts at the first VAD frame whose
probability reaches ``threshold`` and is reported ``prefix_padding_ms`` earlier (the padding is
part of the committed audio); it stops once the probability has stayed below
``threshold - 0.15`` (hysteresis, as Silero's reference iterator does) for
``silence_duration_ms``, and is reported at the end of that silence.

``semantic_vad`` has no end-of-turn language model here; its ``eagerness`` picks how much
silence ends a turn: ``high`` 300 ms, ``medium``/``auto`` 700 ms, ``low`` 1200 ms, with
``threshold`` 0.5 and 300 ms of prefix padding.

``idle_timeout_ms`` counts from :meth:`TurnDetector.arm_idle` (the moment the assistant's
audio finished playing) and fires once if no speech started in that time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import soxr

from callgate.engines.vad import VoiceActivity

logger = logging.getLogger(__name__)

INPUT_RATE = 24000
_HYSTERESIS = 0.15
_EAGERNESS_SILENCE_MS = {"high": 300, "medium": 700, "auto": 700, "low": 1200}


def default_vad() -> VoiceActivity | None:
    """Silero (ONNX on onnxruntime), one RNN state per session; None if it cannot load."""
    try:
        from callgate.engines.vad import SileroVad

        return SileroVad()
    except Exception:
        logger.exception("cannot load the Silero VAD model")
        return None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    speech_end_ms: int  # where the silence began: the caller's real end of speech


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    audio_start_ms: int
    audio_end_ms: int


TurnEvent = SpeechStarted | SpeechStopped | IdleTimeout


@dataclass(frozen=True, slots=True)
class TurnConfig:
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    idle_timeout_ms: int | None
    create_response: bool
    interrupt_response: bool

    @classmethod
    def from_session(cls, turn_detection: dict[str, Any] | None) -> TurnConfig | None:
        """The detector settings for a session's ``audio.input.turn_detection`` (None: off)."""
        if turn_detection is None:
            return None
        create = turn_detection.get("create_response")
        interrupt = turn_detection.get("interrupt_response")
        common = {"create_response": True if create is None else bool(create),
                  "interrupt_response": True if interrupt is None else bool(interrupt)}
        if turn_detection.get("type") == "semantic_vad":
            eagerness = turn_detection.get("eagerness") or "auto"
            return cls(threshold=0.5, prefix_padding_ms=300,
                       silence_duration_ms=_EAGERNESS_SILENCE_MS[eagerness],
                       idle_timeout_ms=None, **common)
        idle = turn_detection.get("idle_timeout_ms")
        return cls(threshold=float(_or(turn_detection.get("threshold"), 0.5)),
                   prefix_padding_ms=int(_or(turn_detection.get("prefix_padding_ms"), 300)),
                   silence_duration_ms=int(_or(turn_detection.get("silence_duration_ms"), 500)),
                   idle_timeout_ms=int(idle) if idle else None, **common)


def _or(value: Any, default: float) -> Any:
    return default if value is None else value


class TurnDetector:
    """Feeds caller audio through a :class:`VoiceActivity` and reports turn events."""

    def __init__(self, config: TurnConfig, vad: VoiceActivity) -> None:
        self.config = config
        self._vad = vad
        # Low quality on purpose: its short filter delays the first VAD frame by one 20 ms
        # frame less than soxr's default (HQ), and voice activity needs no hi-fi.
        self._resampler: Any = (None if vad.sample_rate == INPUT_RATE else
                                soxr.ResampleStream(INPUT_RATE, vad.sample_rate, 1,
                                                    dtype="int16", quality="LQ"))
        self._frame_bytes = 2 * vad.frame_samples
        self._pending = bytearray()
        self._input_samples = 0  # at 24 kHz
        self._vad_samples = 0  # at the VAD's rate, frames consumed
        self.speaking = False
        self._silence_start_ms: int | None = None
        self._idle_from_ms: int | None = None

    @property
    def position_ms(self) -> int:
        """Milliseconds of caller audio fed so far."""
        return self._input_samples * 1000 // INPUT_RATE

    def reconfigure(self, config: TurnConfig) -> None:
        self.config = config

    def arm_idle(self) -> None:
        """The assistant finished speaking: start the idle timeout (if configured)."""
        self._idle_from_ms = self.position_ms if self.config.idle_timeout_ms else None

    def disarm_idle(self) -> None:
        self._idle_from_ms = None

    def reset(self) -> None:
        """Forget a speech segment in progress (``input_audio_buffer.clear``)."""
        self.speaking = False
        self._silence_start_ms = None
        self._vad.reset()

    def feed(self, pcm: bytes) -> list[TurnEvent]:
        self._input_samples += len(pcm) // 2
        if self._resampler is not None:
            import numpy as np

            out = self._resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
            self._pending += out.astype("<i2").tobytes()
        else:
            self._pending += pcm
        events: list[TurnEvent] = []
        while len(self._pending) >= self._frame_bytes:
            frame = bytes(self._pending[:self._frame_bytes])
            del self._pending[:self._frame_bytes]
            start_ms = self._vad_samples * 1000 // self._vad.sample_rate
            self._vad_samples += self._vad.frame_samples
            end_ms = self._vad_samples * 1000 // self._vad.sample_rate
            event = self._step(self._vad.probability(frame), start_ms, end_ms)
            if event is not None:
                events.append(event)
        idle = self._check_idle()
        if idle is not None:
            events.append(idle)
        return events

    def _step(self, probability: float, start_ms: int, end_ms: int) -> TurnEvent | None:
        cfg = self.config
        if not self.speaking:
            if probability >= cfg.threshold:
                self.speaking = True
                self._silence_start_ms = None
                self._idle_from_ms = None
                return SpeechStarted(max(0, start_ms - cfg.prefix_padding_ms))
            return None
        if probability >= cfg.threshold:
            self._silence_start_ms = None
        elif probability < max(cfg.threshold - _HYSTERESIS, 0.01):
            if self._silence_start_ms is None:
                self._silence_start_ms = start_ms
            if end_ms - self._silence_start_ms >= cfg.silence_duration_ms:
                self.speaking = False
                speech_end = self._silence_start_ms
                self._silence_start_ms = None
                return SpeechStopped(audio_end_ms=end_ms, speech_end_ms=speech_end)
        return None

    def _check_idle(self) -> IdleTimeout | None:
        timeout = self.config.idle_timeout_ms
        if self._idle_from_ms is None or timeout is None or self.speaking:
            return None
        if self.position_ms - self._idle_from_ms >= timeout:
            start, self._idle_from_ms = self._idle_from_ms, None
            return IdleTimeout(audio_start_ms=start, audio_end_ms=self.position_ms)
        return None


class InputAudioBuffer:
    """Caller audio not yet committed, with its start position in the input stream."""

    def __init__(self, max_ms: int = 5 * 60 * 1000) -> None:
        self._pcm = bytearray()
        self._start = 0  # samples since the session started
        self._max_bytes = max_ms * INPUT_RATE * 2 // 1000

    def __len__(self) -> int:
        return len(self._pcm)

    @property
    def start_ms(self) -> int:
        return self._start * 1000 // INPUT_RATE

    @property
    def duration_ms(self) -> int:
        return len(self._pcm) * 1000 // (2 * INPUT_RATE)

    @property
    def end_ms(self) -> int:
        return (self._start + len(self._pcm) // 2) * 1000 // INPUT_RATE

    def append(self, pcm: bytes) -> None:
        self._pcm += pcm
        if len(self._pcm) > self._max_bytes:
            self._drop(len(self._pcm) - self._max_bytes)

    def keep_last(self, ms: int) -> None:
        """Drop all but the last ``ms`` (the prefix padding kept while nobody speaks)."""
        excess = len(self._pcm) - ms * INPUT_RATE * 2 // 1000
        if excess > 0:
            self._drop(excess)

    def take(self) -> bytes:
        """Everything buffered; the buffer is left empty and starts where this ended."""
        pcm = bytes(self._pcm)
        self._drop(len(self._pcm))
        return pcm

    def clear(self) -> None:
        self._drop(len(self._pcm))

    def _drop(self, nbytes: int) -> None:
        nbytes -= nbytes % 2
        del self._pcm[:nbytes]
        self._start += nbytes // 2
