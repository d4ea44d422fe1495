"""Test doubles for the realtime session: a scripted engine, an energy VAD, a fake phone line,
and a watcher that checks every server event against the openai SDK's models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import soxr
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse

from callgate.engines.base import (
    AudioDelta,
    Engine,
    EngineError,
    EngineEvent,
    ResponseDone,
    ResponseRequest,
    Stage,
    TextDelta,
    TranscriptDelta,
    TranscriptDone,
)
from callgate.media.formats import AudioFormat
from callgate.realtime.session import RealtimeSession
from callgate.realtime.subscribers import Subscription

RATE = 24000
FRAME = 960  # bytes in 20 ms of PCM16 at 24 kHz

_SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
_SESSION = pydantic.TypeAdapter(RealtimeSessionCreateResponse)


def check_server_event(ev: dict[str, Any]) -> Any:
    """Parse ``ev`` as the SDK's server event union (strict JSON), as agent frameworks do.

    Fails on a missing or mistyped field, an unknown event type, and also on any field the
    SDK models do not declare (they would accept it silently; callgate sends none).
    """
    model = _SERVER_EVENT.validate_json(json.dumps(ev), strict=True)
    assert model.type == ev["type"], (model.type, ev["type"])
    extras = set(all_extras(model))
    if ev["type"] in ("session.created", "session.updated"):
        # The event declares the session as the create *request*; OpenAI sends the create
        # *response* (with id/object/expires_at), which must validate in full.
        extras -= {"session.id", "session.object", "session.expires_at"}
        response = _SESSION.validate_json(json.dumps(ev["session"]), strict=True)
        assert not all_extras(response), all_extras(response)
    assert not extras, f"{ev['type']} carries undeclared fields {sorted(extras)}"
    return model


def all_extras(value: object, path: str = "") -> list[str]:
    """Every field of a parsed SDK model that the model does not declare."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [path + name for name in value.model_extra or {}]
        for name in type(value).model_fields:
            found += all_extras(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list):
        for index, element in enumerate(value):
            found += all_extras(element, f"{path.rstrip('.')}[{index}].")
    return found


# --- audio ----------------------------------------------------------------------------------
def tone(ms: int, amplitude: int = 8000, freq: float = 300.0) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return bytes((amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes())


def silence(ms: int) -> bytes:
    return bytes(2 * (RATE * ms // 1000))


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + FRAME] for i in range(0, len(pcm), FRAME)]


def espeak(text: str, rate: int = RATE) -> bytes:
    """``text`` spoken by espeak-ng, PCM16 mono at ``rate``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "say.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path)) as wav:
            source = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return bytes(soxr.resample(samples, source, rate).astype("<i2").tobytes())


class EnergyVad:
    """A VoiceActivity by loudness: 16 kHz frames of 512 samples, like Silero."""

    sample_rate = 16000
    frame_samples = 512

    def __init__(self) -> None:
        self.frames = 0
        self.resets = 0

    def probability(self, frame: bytes) -> float:
        assert len(frame) == 2 * self.frame_samples
        self.frames += 1
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        return min(1.0, float(np.sqrt(np.mean(samples ** 2))) / 2000.0)

    def reset(self) -> None:
        self.resets += 1


# --- the phone line -------------------------------------------------------------------------
class FakeLine:
    """An AudioOutput that plays out in real time by ``clock`` and records what it got."""

    audio_format = AudioFormat.pcm(RATE)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.played = bytearray()
        self.busy_until = 0.0
        self.clears: list[int] = []

    def play(self, pcm: bytes) -> None:
        now = self.clock()
        self.busy_until = max(self.busy_until, now) + len(pcm) / 2 / RATE
        self.played += pcm

    def queued_ms(self) -> int:
        return max(0, round((self.busy_until - self.clock()) * 1000))

    def clear(self) -> int:
        dropped = self.queued_ms()
        self.busy_until = self.clock()
        self.clears.append(dropped)
        return dropped


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the engine -----------------------------------------------------------------------------
@dataclass
class Gate:
    """A script step: wait until the test opens ``event``."""

    event: asyncio.Event


Script = list[EngineEvent | Gate]


def speech_reply(text: str, audio_ms: int = 400) -> Script:
    return [Stage("llm_first_token", time.monotonic()), TextDelta(text[: len(text) // 2]),
            AudioDelta(tone(audio_ms // 2, 3000)), TextDelta(text[len(text) // 2:]),
            AudioDelta(tone(audio_ms - audio_ms // 2, 3000)),
            ResponseDone(usage={"input_tokens": 12, "output_tokens": 7})]


class ScriptedEngine(Engine):
    """A cascade engine whose transcripts and responses come from the test."""

    def __init__(self, *, transcripts: list[str] | None = None,
                 replies: list[Script] | None = None,
                 reply: Callable[[ResponseRequest], Script] | None = None) -> None:
        self.transcripts = list(transcripts or [])
        self.replies = list(replies or [])
        self.reply = reply
        self.requests: list[ResponseRequest] = []
        self.heard: list[bytes] = []
        self.started: dict[str, Any] | None = None
        self.updates: list[dict[str, Any]] = []
        self.closed = False
        self.respond_closed = 0

    async def start(self, session: dict[str, Any]) -> None:
        self.started = session

    async def update(self, session: dict[str, Any]) -> None:
        self.updates.append(session)

    async def transcribe(self, pcm: bytes) -> AsyncIterator[TranscriptDelta | TranscriptDone
                                                            | Stage | EngineError]:
        self.heard.append(pcm)
        text = self.transcripts.pop(0) if self.transcripts else "hello"
        if text.startswith("!"):
            yield EngineError(text[1:], "stt_failed")
            return
        for word in text.split():
            yield TranscriptDelta(word + " ")
        yield Stage("transcript_ready", time.monotonic())
        yield TranscriptDone(text)

    async def respond(self, request: ResponseRequest) -> AsyncIterator[EngineEvent]:
        self.requests.append(request)
        if self.reply is not None:
            script = self.reply(request)
        else:
            script = self.replies.pop(0) if self.replies else speech_reply("Hi there.")
        try:
            for step in script:
                if isinstance(step, Gate):
                    await step.event.wait()
                else:
                    yield step
                    await asyncio.sleep(0)
        finally:
            self.respond_closed += 1

    async def aclose(self) -> None:
        self.closed = True


# --- the observer ---------------------------------------------------------------------------
class Watcher:
    """Reads a session's events, checking each against the SDK's models."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session
        self.sub: Subscription = session.subscribe()
        self.seen: list[dict[str, Any]] = []

    def pending(self) -> list[dict[str, Any]]:
        """Events queued right now, without waiting."""
        out = []
        while (ev := self.sub.get_nowait()) is not None:
            check_server_event(ev)
            self.seen.append(ev)
            out.append(ev)
        return out

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        ev = await asyncio.wait_for(self.sub.__anext__(), timeout)
        check_server_event(ev)
        self.seen.append(ev)
        return ev

    async def until(self, kind: str, timeout: float = 5.0,
                    **match: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The next event of type ``kind`` (with fields ``match``), and all events up to it."""
        got: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            ev = await self.next(max(left, 0.001))
            got.append(ev)
            if ev["type"] == kind and all(ev.get(k) == v for k, v in match.items()):
                return ev, got

    @staticmethod
    def types(events: list[dict[str, Any]]) -> list[str]:
        return [e["type"] for e in events]
