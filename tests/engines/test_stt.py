from __future__ import annotations

import asyncio

import pytest

from callgate.engines.base import TranscriptDelta, TranscriptDone
from callgate.engines.hub import ModelUnavailable
from callgate.engines.stt import WhisperTranscriber, model_path

from .audio import espeak, words
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
    assert {"what", "weather", "today"} <= words(items[-1].text)


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
