"""Test speech: espeak-ng says a phrase, the tests get PCM16 mono at the rate they want."""

from __future__ import annotations

import re
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr


def espeak(text: str, rate: int = 24000, *, lead_silence: float = 0.0) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "say.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path)) as wav:
            source_rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    audio = soxr.resample(samples, source_rate, rate)
    silence = np.zeros(int(lead_silence * rate), dtype=np.int16)
    return np.concatenate([silence, audio]).astype("<i2").tobytes()


# The spoken test questions (espeak-ng says them in the tests).
QUESTIONS = ["What is the capital of France?", "How many days are there in a week?",
             "What color is the sky on a clear day?", "Which time zone is London in?",
             "What is two plus two?", "Which planet is closest to the sun?",
             "How far away is the moon?", "Who wrote the play Hamlet?",
             "What is the weather like today?", "Can you book a table for two tonight?"]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def seconds(pcm: bytes, rate: int = 24000) -> float:
    return len(pcm) / 2 / rate


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


_DIGITS = dict(enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven",
                          "eight", "nine", "ten"]))


def _spoken_words(text: str) -> list[str]:
    """Lower-case words, with Whisper's digits written out ("2" -> "two")."""
    tokens = re.findall(r"[a-z']+|\d+", text.lower())
    return [_DIGITS.get(int(t), t) if t.isdigit() else t for t in tokens]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word errors (substitutions, insertions, deletions) over all reference words."""
    errors = total = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = _spoken_words(reference), _spoken_words(hypothesis)
        row = list(range(len(hyp) + 1))
        for i, word in enumerate(ref, 1):
            diagonal, row[0] = row[0], i
            for j, heard in enumerate(hyp, 1):
                diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                               diagonal + (word != heard))
        errors += row[-1]
        total += len(ref)
    return errors / max(total, 1)


def street_noise(samples: int, rng: np.random.Generator, rate: int = 24000
                 ) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    """Unit-power street-like noise: the broadband roar of traffic (pink noise with a white
    hiss on top) that swells and fades as cars pass."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples, 1 / rate)
    freqs[0] = freqs[1]
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), samples)
    roar = pink / np.std(pink) + 0.5 * rng.standard_normal(samples)
    traffic = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * np.arange(samples) / rate) ** 2
    noise = traffic * roar
    return np.asarray(noise / np.std(noise), dtype=np.float64)
