from __future__ import annotations

import asyncio

import pytest

from callgate.engines.base import TranscriptDelta, TranscriptDone
from callgate.engines.hub import ModelUnavailable
from callgate.engines.stt import (
    FAST_OPTIONS,
    WhisperTranscriber,
    load_whisper,
    model_path,
    to_whisper_audio,
)
from callgate.media.g711 import ulaw_decode, ulaw_encode

from .audio import QUESTIONS, espeak, seconds, word_error_rate, words
from .peer import closed_port_url

pytestmark = pytest.mark.slow


def test_an_espeak_question_is_transcribed() -> None:
    pcm = espeak("what is the weather like today", 24000, lead_silence=0.3)

    async def main() -> list[TranscriptDelta | TranscriptDone]:
        return [item async for item in WhisperTranscriber().transcribe(pcm)]

    items = asyncio.run(main())
    assert isinstance(items[-1], TranscriptDone)
    deltas = [item.text for item in items if isinstance(item, TranscriptDelta)]
    assert deltas and "".join(deltas).strip() == items[-1].text
    # (Accuracy over many questions: test_the_fitted_window_is_as_accurate_as_the_30_s_one.)
    assert len({"what", "weather", "like", "today"} & words(items[-1].text)) >= 3


def test_a_misheard_clip_cannot_loop_for_longer_than_it_was_spoken() -> None:
    # Whisper tiny hears this question, after a phone line's μ-law, as "1, 2, 3, 3, 3, ..."
    # and, uncapped, repeats itself until its 224-token limit: 0.6 s and a page of text
    # where 1.5 s of speech holds a dozen words.
    spoken = espeak("What is two plus two?", 8000, lead_silence=0.15) + bytes(2 * 400)
    pcm = ulaw_decode(ulaw_encode(spoken))

    async def main() -> str:
        items = [item async for item in WhisperTranscriber().transcribe(pcm, 8000)]
        assert isinstance(items[-1], TranscriptDone)
        return items[-1].text

    text = asyncio.run(main())
    assert len(text.split()) <= 4 * seconds(pcm, 8000) + 3, text


def test_other_rates_are_resampled() -> None:
    pcm = espeak("good morning", 8000)

    async def main() -> str:
        items = [item async for item in WhisperTranscriber().transcribe(pcm, 8000)]
        return items[-1].text

    assert "morning" in words(asyncio.run(main()))


def test_the_shipped_model_needs_no_network() -> None:
    assert model_path("tiny") == model_path("tiny.en")


def test_a_size_that_is_not_shipped_fails_clearly_offline() -> None:
    with pytest.raises(ModelUnavailable) as info:
        model_path("base", endpoint=closed_port_url().removesuffix("/v1"))
    assert "Whisper model 'base'" in str(info.value)
    assert "could not be downloaded" in str(info.value)


def test_an_unknown_size_names_the_known_ones() -> None:
    with pytest.raises(ModelUnavailable, match="large-v3"):
        model_path("gigantic")


def test_the_fitted_window_is_as_accurate_as_the_30_s_one() -> None:
    # The spoken test questions, through the transcriber (a window fitted to each) and
    # through faster-whisper's own 30 s path, as the local engine ran before.
    clips = [espeak(q, 24000, lead_silence=lead) + bytes(2 * 12000)
             for lead in (0.0, 0.3, 0.6) for q in QUESTIONS]
    stt = WhisperTranscriber()

    async def fitted(pcm: bytes) -> str:
        items = [item async for item in stt.transcribe(pcm)]
        assert isinstance(items[-1], TranscriptDone)
        return items[-1].text

    def full_window(pcm: bytes) -> str:
        segments, _ = load_whisper().transcribe(to_whisper_audio(pcm, 24000), language="en",
                                                **FAST_OPTIONS)
        return "".join(segment.text for segment in segments)

    new = [asyncio.run(fitted(pcm)) for pcm in clips]
    old = [full_window(pcm) for pcm in clips]
    said = QUESTIONS * 3
    old_wer, new_wer = word_error_rate(said, old), word_error_rate(said, new)
    print(f"\nWER on the spoken test questions: 30 s window {old_wer:.3f}, "
          f"fitted window {new_wer:.3f}")
    assert new_wer <= old_wer
