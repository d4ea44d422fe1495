"""Noise suppression (RNNoise) of caller audio."""

from __future__ import annotations

import numpy as np
import pytest

from callgate.engines.denoise import NoiseSuppressor

from .audio import street_noise


def suppress(pcm: bytes, mode: str = "near_field") -> bytes:
    """``pcm`` through a new suppressor in 20 ms frames, as a call's audio goes."""
    suppressor = NoiseSuppressor(mode)
    out = b"".join(suppressor.process(pcm[i:i + 960]) for i in range(0, len(pcm), 960))
    suppressor.close()
    return out


def test_frames_keep_their_length_and_noise_is_removed() -> None:
    rng = np.random.default_rng(3)
    noise = (street_noise(24000, rng) * 2000).astype("<i2").tobytes()
    for mode in ("near_field", "far_field"):
        out = suppress(noise, mode)
        assert len(out) == len(noise)
        level = np.std(np.frombuffer(out, dtype="<i2")[4800:])
        assert level < 2000 / (8 if mode == "near_field" else 3), (mode, level)
    with pytest.raises(ValueError, match="near_field"):
        NoiseSuppressor("loud")
