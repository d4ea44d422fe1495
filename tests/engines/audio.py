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


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def seconds(pcm: bytes, rate: int = 24000) -> float:
    return len(pcm) / 2 / rate


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
