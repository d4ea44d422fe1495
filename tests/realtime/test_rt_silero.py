"""Turn detection with the real Silero model (ONNX) on espeak-ng speech."""

from __future__ import annotations

import shutil

import pytest

from callgate.realtime.session import RealtimeSession
from callgate.realtime.turns import Pause, SpeechStarted, SpeechStopped, TurnConfig, TurnDetector

from .doubles import ScriptedEngine, Watcher, espeak, frames, silence, tone

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SentenceMs = int


def sentence() -> tuple[bytes, SentenceMs]:
    speech = espeak("Hello, I would like to book a table for two people tonight.")
    return speech, len(speech) * 1000 // 48000


def test_silero_finds_the_sentence() -> None:
    from callgate.engines.vad import SileroVad

    speech, speech_ms = sentence()
    config = TurnConfig.from_session({"type": "server_vad", "silence_duration_ms": 700})
    assert config is not None
    detector = TurnDetector(config, SileroVad())
    events = []
    for frame in frames(silence(1000) + speech + silence(1500)):
        events += [e for e in detector.feed(frame) if not isinstance(e, Pause)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    start, stop = events
    assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
    # Reported 300 ms (prefix padding) before the speech begins, give or take a VAD frame
    # and the silence espeak puts around its words.
    assert 1000 - 300 - 64 <= start.audio_start_ms <= 1000 - 300 + 200
    assert 1000 + speech_ms - 400 <= stop.speech_end_ms <= 1000 + speech_ms + 100
    assert stop.audio_end_ms - stop.speech_end_ms >= 700


def test_silero_ignores_a_steady_tone_and_silence() -> None:
    from callgate.engines.vad import SileroVad

    config = TurnConfig.from_session({"type": "server_vad"})
    assert config is not None
    detector = TurnDetector(config, SileroVad())
    events = []
    for frame in frames(silence(1000) + tone(1000, 4000, 1000.0) + silence(500)):
        events += detector.feed(frame)
    assert events == []


@pytest.mark.anyio
async def test_session_uses_silero_by_default() -> None:
    speech, _ = sentence()
    engine = ScriptedEngine(transcripts=["book a table"])
    session = RealtimeSession(config={}, engine=engine, call_id="rtc_s", output=None)
    await session.start()
    watcher = Watcher(session)
    await watcher.next()
    for frame in frames(silence(500) + speech + silence(1000)):
        session.feed_audio(frame)
    await watcher.until("input_audio_buffer.speech_started")
    await watcher.until("input_audio_buffer.committed")
    completed, _ = await watcher.until("conversation.item.input_audio_transcription.completed")
    assert completed["transcript"] == "book a table"
    await watcher.until("response.done")
    await session.close("done")
