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

``semantic_vad`` asks an end-of-turn model (Smart Turn, engines/turn_model.py) once the
caller has been silent for a moment. One answer that is sure enough ends the turn there; a
less sure one is checked again one VAD frame (32 ms) later, and the turn ends if the two
answers' mean is enough; otherwise the detector keeps listening, and the turn ends anyway after
the longest wait. The second look is there because the model's answer on one pause swings with
the exact end of the window: over 100 Piper renditions of the test phrase "I would like to
book|" it went above 0.7 for 2 of them at the first check, and the mean of two checks never
did, while "... a table for two." scored below 0.7 at the first check in 6 of 100 and on
the mean in 3. ``eagerness`` sets the thresholds and the longest wait (OpenAI's documented
8/4/2 s):

==========  ==========  ===============  ================  ============
eagerness   ask after   one check ends   mean of two ends  longest wait
==========  ==========  ===============  ================  ============
high        64 ms       p >= 0.8         p >= 0.5          2000 ms
medium      64 ms       p >= 0.9         p >= 0.7          4000 ms
auto        64 ms       p >= 0.9         p >= 0.7          4000 ms
low         288 ms      p >= 0.95        p >= 0.85         8000 ms
==========  ==========  ===============  ================  ============

The model hears the current turn only, from half a second before its speech began (as
Pipecat's Smart Turn analyzer feeds it), up to its last 8 s: an earlier turn's words are not
the caller's current sentence.

The detector is sans-IO here too: it returns a :class:`Pause` with the audio to judge, the
session runs the model off the event loop and hands the probability back through
:meth:`TurnDetector.verdict`, which may ask for the second check; an answer that speech has
overtaken since is ignored.

``server_vad`` keeps ``silence_duration_ms`` as configured, with one exception: in the
gateway's default profile (a session whose client never set ``turn_detection``), a pause
after 64 ms that the model judges clearly finished (two checks' mean p >= 0.9) ends the turn
there. A client
that sets ``turn_detection`` itself, even to the same values, gets silence only.

Every mode reports a :class:`Pause` once the caller has been silent for ``pause_ms`` (the
model's "ask after" above, else 160 ms or half the silence that ends a turn): the session
starts transcribing there, so that the transcript is ready, or nearly, when the turn ends;
:class:`SpeechStopped` says which pause it ended, so that the session knows whether the
caller said anything after it. Without the
model, ``eagerness`` picks a plain silence instead: ``high`` 300 ms, ``medium``/``auto``
700 ms, ``low`` 1200 ms. Both modes use ``threshold`` 0.5 and 300 ms of prefix padding.

``idle_timeout_ms`` counts from :meth:`TurnDetector.arm_idle` (the moment the assistant's
audio finished playing) and fires once if no speech started in that time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import soxr

from callgate.engines.supervisor import workers
from callgate.engines.vad import VoiceActivity
from callgate.log import event

logger = logging.getLogger(__name__)

INPUT_RATE = 24000
_HYSTERESIS = 0.15
_EAGERNESS_SILENCE_MS = {"high": 300, "medium": 700, "auto": 700, "low": 1200}
# eagerness -> (silence before asking the model, one check's probability that ends the turn,
# two checks' mean that does, longest wait)
_EAGERNESS_MODEL = {"high": (64, 0.8, 0.5, 2000), "medium": (64, 0.9, 0.7, 4000),
                    "auto": (64, 0.9, 0.7, 4000), "low": (288, 0.95, 0.85, 8000)}
# server_vad as the gateway's default profile: a turn that two checks find this clearly
# finished ends early.
_CLEARLY_COMPLETE = 0.9
_SECOND_CHECK_MS = 32
# The end-of-turn model reads the last 8 s of the turn and the half second before it.
_TURN_CONTEXT_MS = 8000
_TURN_LEAD_MS = 500


EndOfTurnModel = Callable[[bytes, int], Awaitable[float]]


def default_end_of_turn() -> EndOfTurnModel | None:
    """Smart Turn, run in the ``turn`` worker process; None (semantic_vad falls back to
    silence) when its weights are not installed."""
    from callgate.engines import turn_model

    try:
        turn_model.default_model_path()
    except Exception as exc:
        event(logger, "end_of_turn_model_unavailable", logging.WARNING, error=str(exc))
        return None

    async def probability(pcm: bytes, sample_rate: int) -> float:
        if sample_rate != turn_model.RATE:
            raise ValueError(f"the end-of-turn model takes {turn_model.RATE} Hz audio")
        answer = await workers().stage("turn").call(turn_model.end_of_turn, {"pcm": pcm})
        return float(answer[0]) if answer else 0.0

    return probability


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
    pause_id: int | None = None  # the Pause reported in that silence, if one was


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Pause:
    """The caller has paused: ``pcm`` is the turn so far at the VAD's rate, ending in the
    silence so far. With a model (``TurnConfig.complete_at``), hand its answer to
    :meth:`TurnDetector.verdict` with this pause. ``second``: the second look at the same
    pause, which the first answer asked for."""

    pcm: bytes
    sample_rate: int
    pause_id: int
    second: bool = False


TurnEvent = SpeechStarted | SpeechStopped | IdleTimeout | Pause


@dataclass(frozen=True, slots=True)
class TurnConfig:
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    idle_timeout_ms: int | None
    create_response: bool
    interrupt_response: bool
    # How much silence makes a Pause. With a model: the mean probability of two checks that
    # ends the turn at a pause (silence_duration_ms is then the longest wait), and the one
    # that ends it at the first check (None: always two). complete_at None: silence only.
    pause_ms: int = 160
    complete_at: float | None = None
    sure_at: float | None = None

    @classmethod
    def from_session(cls, turn_detection: dict[str, Any] | None, *, model: bool = False,
                     default_profile: bool = False) -> TurnConfig | None:
        """The detector settings for a session's ``audio.input.turn_detection`` (None: off);
        ``model``: an end-of-turn model is available; ``default_profile``: the client left
        turn detection as the gateway set it, so a clearly finished turn may end early."""
        if turn_detection is None:
            return None
        create = turn_detection.get("create_response")
        interrupt = turn_detection.get("interrupt_response")
        common = {"create_response": True if create is None else bool(create),
                  "interrupt_response": True if interrupt is None else bool(interrupt)}
        if turn_detection.get("type") == "semantic_vad":
            eagerness = turn_detection.get("eagerness") or "auto"
            if model:
                pause, sure_at, complete_at, longest = _EAGERNESS_MODEL[eagerness]
                return cls(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=longest,
                           idle_timeout_ms=None, pause_ms=pause, complete_at=complete_at,
                           sure_at=sure_at, **common)
            silence = _EAGERNESS_SILENCE_MS[eagerness]
            return cls(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=silence,
                       idle_timeout_ms=None, pause_ms=_pause_ms(silence), **common)
        idle = turn_detection.get("idle_timeout_ms")
        silence = int(_or(turn_detection.get("silence_duration_ms"), 500))
        early = model and default_profile
        return cls(threshold=float(_or(turn_detection.get("threshold"), 0.5)),
                   prefix_padding_ms=int(_or(turn_detection.get("prefix_padding_ms"), 300)),
                   silence_duration_ms=silence, idle_timeout_ms=int(idle) if idle else None,
                   pause_ms=_EAGERNESS_MODEL["high"][0] if early else _pause_ms(silence),
                   complete_at=_CLEARLY_COMPLETE if early else None, **common)


def _pause_ms(silence_ms: int) -> int:
    return min(160, silence_ms // 2)


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
        self._context = bytearray()  # the turn so far at the VAD's rate, for the model
        self._context_bytes = 2 * vad.sample_rate * _TURN_CONTEXT_MS // 1000
        self._lead_bytes = 2 * vad.sample_rate * _TURN_LEAD_MS // 1000
        self._pause_id = 0  # bumped whenever the current pause ends
        self._paused = False  # this silence was reported as a Pause already
        self._first: float | None = None  # the first check's answer, if it wants a second
        self._second_pcm: bytes | None = None  # the audio for a second check, once due
        self._second_sent = False

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
        self._next_pause()
        self._vad.reset()

    def verdict(self, check: Pause, probability: float) -> SpeechStopped | Pause | None:
        """The model's answer to ``check``, if it is still current (the caller is still
        silent): the turn ends now (:class:`SpeechStopped`), or the pause is to be checked
        again (a second :class:`Pause`), or the detector keeps listening (None)."""
        cfg = self.config
        if (check.pause_id != self._pause_id or not self.speaking
                or self._silence_start_ms is None or cfg.complete_at is None):
            return None
        if check.second:
            first, self._first = self._first, None
            if first is not None and (first + probability) / 2 >= cfg.complete_at:
                return self._stop(self.position_ms)
            return None
        if cfg.sure_at is not None and probability >= cfg.sure_at:
            return self._stop(self.position_ms)
        if probability < 2 * cfg.complete_at - 1:  # no second answer could lift the mean
            return None
        self._first = probability
        return self._second_check()

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
            if self.config.complete_at is not None:
                self._context += frame
                del self._context[:-(self._context_bytes if self.speaking
                                     else self._lead_bytes)]
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
            if self._silence_start_ms is not None:
                self._silence_start_ms = None
                self._next_pause()
        elif probability < max(cfg.threshold - _HYSTERESIS, 0.01):
            if self._silence_start_ms is None:
                self._silence_start_ms = start_ms
            silent_ms = end_ms - self._silence_start_ms
            if silent_ms >= cfg.silence_duration_ms:
                return self._stop(end_ms)
            if not self._paused and silent_ms >= cfg.pause_ms:
                self._paused = True
                return Pause(bytes(self._context), self._vad.sample_rate, self._pause_id)
            if (self._paused and self._second_pcm is None and cfg.complete_at is not None
                    and silent_ms >= cfg.pause_ms + _SECOND_CHECK_MS):
                # Kept even before the first answer is in: a model slower than the audio
                # still gets the second look at this point of the silence, not a later one
                # (a longer silence alone makes an unfinished phrase sound finished to it).
                self._second_pcm = bytes(self._context)
            return self._second_check()
        return None

    def _second_check(self) -> Pause | None:
        """The second look at this pause, once the first answer asked for it and the
        silence has gone on one more VAD frame."""
        if self._first is None or self._second_pcm is None or self._second_sent:
            return None
        self._second_sent = True
        return Pause(self._second_pcm, self._vad.sample_rate, self._pause_id, second=True)

    def _next_pause(self) -> None:
        self._pause_id += 1
        self._paused = False
        self._first = None
        self._second_pcm = None
        self._second_sent = False

    def _stop(self, end_ms: int) -> SpeechStopped:
        assert self._silence_start_ms is not None
        stopped = SpeechStopped(audio_end_ms=end_ms, speech_end_ms=self._silence_start_ms,
                                pause_id=self._pause_id if self._paused else None)
        self.speaking = False
        self._silence_start_ms = None
        self._next_pause()
        return stopped

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

    def peek(self) -> bytes:
        """Everything buffered, left in place."""
        return bytes(self._pcm)

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
