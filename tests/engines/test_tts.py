from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from callgate.engines.hub import ModelUnavailable
from callgate.engines.stt import WhisperTranscriber
from callgate.engines.tts import (
    ONSET_LEAD_S,
    SHIPPED_VOICE,
    PiperSpeech,
    is_voice,
    trim_lead,
    voice_files,
)

from .audio import rms, seconds, words

pytestmark = pytest.mark.slow

SENTENCE = "The weather today is sunny and warm."


async def _say(text: str, **kwargs: object) -> list[bytes]:
    return [pcm async for pcm in PiperSpeech().speak(text, **kwargs)]  # type: ignore[arg-type]


async def _hear(pcm: bytes) -> str:
    items = [item async for item in WhisperTranscriber().transcribe(pcm)]
    return items[-1].text


def test_speech_is_24khz_pcm_of_plausible_length_and_says_the_text() -> None:
    async def main() -> tuple[bytes, str]:
        pcm = b"".join(await _say(SENTENCE))
        return pcm, await _hear(pcm)

    pcm, heard = asyncio.run(main())
    assert len(pcm) % 2 == 0
    # Seven words at a normal pace, at 24 kHz (Piper's native 22.05 kHz would be ~9% longer).
    assert 1.2 < seconds(pcm) < 4.5
    assert rms(pcm) > 1000
    assert {"weather", "today", "sunny", "warm"} <= words(heard)


def test_the_first_words_start_at_once() -> None:
    # Piper's own lead-in is 30-100 ms of near silence; the caller must not wait through it.
    pcm = b"".join(asyncio.run(_say("Paris is the capital of France.")))
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    onset = int(np.flatnonzero(np.abs(samples) > 0.01)[0])
    assert onset <= 0.010 * 24000


def test_trim_lead_keeps_a_little_before_the_onset_and_all_of_silence() -> None:
    rate = 22050
    audio = np.zeros(rate, np.float32)
    audio[2000:] = 0.5 * np.sin(np.arange(rate - 2000) / 5)
    trimmed = trim_lead(audio, rate)
    lead = int(ONSET_LEAD_S * rate)
    onset = 2000 + 1  # sin(0) is silent; the next sample is loud
    assert abs(audio[onset]) > 0.01
    assert len(trimmed) == len(audio) - (onset - lead)
    assert np.array_equal(trimmed[-100:], audio[-100:])
    quiet = np.full(500, 0.001, np.float32)
    assert np.array_equal(trim_lead(quiet, rate), quiet)


def _spoken_seconds(pcm: bytes, rate: int = 24000) -> float:
    """First to last sample above 1 % of full scale: the speech without the silence around it,
    which Piper does not scale with the speed."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2")) > 328)
    return float(loud[-1] - loud[0]) / rate if len(loud) else 0.0


def test_speed_maps_to_length_scale() -> None:
    async def main() -> tuple[float, float]:
        normal = _spoken_seconds(b"".join(await _say(SENTENCE)))
        fast = _spoken_seconds(b"".join(await _say(SENTENCE, speed=1.5)))
        return normal, fast

    normal, fast = asyncio.run(main())
    # Not the exact 1/1.5: Piper's pauses do not all scale, and its duration noise varies each
    # run (measured 0.69-0.76 over twelve pairs, once 0.80 in a whole-suite run).
    assert 0.55 * normal < fast < 0.85 * normal, (normal, fast)


def test_synthesis_streams_per_sentence_and_stops_when_closed() -> None:
    text = " ".join(f"This is sentence number {n} of a long answer." for n in range(12))

    async def main() -> tuple[int, float]:
        speech = PiperSpeech()
        await speech.load()
        stream = speech.speak(text)
        first = await anext(stream)
        started = time.monotonic()
        await stream.aclose()  # type: ignore[attr-defined]
        return len(first), time.monotonic() - started

    first_len, close_time = asyncio.run(main())
    # The first piece is one sentence (~2.5 s), not the whole 12-sentence text.
    assert seconds(bytes(first_len)) < 5
    assert close_time < 0.2  # not the ~2 s the other eleven sentences take


def test_voices_by_name_and_path() -> None:
    speech = PiperSpeech()
    assert speech.voice_for("alloy") == SHIPPED_VOICE  # OpenAI's names use the default
    assert speech.voice_for(None) == SHIPPED_VOICE
    assert is_voice("en_GB-alan-low") and is_voice("/voices/x.onnx") and not is_voice("marin")
    model, config = voice_files(SHIPPED_VOICE)
    assert voice_files(str(model)) == (model, config)
    with pytest.raises(ModelUnavailable, match="need"):
        voice_files("/nonexistent/voice.onnx")


def test_a_voice_that_is_not_shipped_fails_clearly_offline() -> None:
    from .peer import closed_port_url

    with pytest.raises(ModelUnavailable, match=r"Piper voice 'en_GB-alan-low'.*downloaded"):
        voice_files("en_GB-alan-low", endpoint=closed_port_url().removesuffix("/v1"))
