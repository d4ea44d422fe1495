from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from callgate.engines.vad import SileroModel, SileroVad, VoiceActivity, default_model_path

from .audio import espeak

RATE = SileroVad.sample_rate
FRAME = SileroVad.frame_samples


def _probabilities(vad: VoiceActivity, pcm: bytes) -> list[float]:
    step = 2 * vad.frame_samples
    return [vad.probability(pcm[i:i + step]) for i in range(0, len(pcm) - step + 1, step)]


def _layouts() -> list[Path]:
    paths = [default_model_path()]
    bundled = Path(str(resources.files("faster_whisper").joinpath("assets/silero_vad_v6.onnx")))
    if bundled.is_file() and bundled != paths[0]:
        paths.append(bundled)
    return paths


@pytest.mark.parametrize("path", _layouts(), ids=lambda p: p.name)
def test_speech_is_likely_silence_and_noise_are_not(path: Path) -> None:
    speech = espeak("what is the weather like today", RATE)
    silence = bytes(2 * RATE)
    noise = np.random.default_rng(7).normal(0, 800, RATE).astype("<i2").tobytes()
    vad = SileroVad(SileroModel(path))
    assert vad.sample_rate == 16000 and vad.frame_samples == 512

    quiet = _probabilities(vad, silence)
    spoken = _probabilities(vad, speech)
    hiss = _probabilities(vad, noise)

    assert max(quiet) < 0.1
    assert float(np.mean(spoken)) > 0.6
    assert sum(p > 0.5 for p in spoken) > 0.6 * len(spoken)
    assert float(np.mean(hiss)) < 0.15


def test_reset_forgets_the_stream() -> None:
    speech = espeak("hello there", RATE)
    vad = SileroVad()
    first = _probabilities(vad, speech)
    vad.reset()
    again = _probabilities(vad, speech)
    assert again == pytest.approx(first, abs=1e-5)


def test_the_model_is_shared_between_calls() -> None:
    assert SileroVad()._model is SileroVad()._model


def test_frame_size_is_checked() -> None:
    with pytest.raises(ValueError, match="512 samples"):
        SileroVad().probability(bytes(2 * 480))
