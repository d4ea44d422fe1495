"""Audio for the media tests: an espeak-ng phrase as a WAV file, and how closely what came back
matches what was sent (FFT cross-correlation for the delay, then a normalized coefficient)."""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Samples = np.ndarray[Any, np.dtype[np.float64]]


def phrase_wav(path: Path, text: str, *, rate: int, channels: int = 1, lead: float = 0.2,
               tail: float = 1.5) -> Path:
    """espeak-ng saying ``text``, converted by sox to 16-bit ``rate`` Hz with ``channels``
    identical channels, with ``lead``/``tail`` seconds of silence around it. baresip's aufile
    source wants the codec's own rate and channel count, and hangs up when the file ends: the
    tail keeps the call up until the echo of the last word is back."""
    spoken = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(spoken), text], check=True, timeout=30)
    subprocess.run(["sox", str(spoken), "-r", str(rate), "-c", str(channels), "-b", "16",
                    str(path), "pad", str(lead), str(tail)], check=True, timeout=30)
    spoken.unlink()
    return path


def read_wav(path: Path) -> tuple[Samples, int]:
    """The first channel of a 16-bit WAV file as floats, and its sample rate."""
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2, f"{path}: not 16-bit"
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        rate = wav.getframerate()
    return data.reshape(-1, channels)[:, 0].astype(np.float64), rate


def coefficient(a: Samples, b: Samples) -> float:
    """Normalized correlation <a,b>/(|a||b|): 1.0 for the same signal at any gain, about 0 for
    unrelated ones; 0 for an all-zero input."""
    energy = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b)) / energy if energy > 0 else 0.0


def upsample(samples: Samples, factor: int) -> Samples:
    """Band-limited interpolation by ``factor`` (zero-padding the spectrum). Aligning at the
    higher rate catches delays that are not a whole number of samples (a resampler's group
    delay seldom is): half a sample off costs a telephone-band signal several hundredths of
    correlation that the audio never lost."""
    if factor == 1 or len(samples) == 0:
        return samples
    spectrum = np.fft.rfft(samples)
    return np.fft.irfft(spectrum, len(samples) * factor) * factor


def _fine_rate(rate: int) -> int:
    """Align at 64 kHz or more: a sixteenth of a sample at 8 kHz, a quarter at 16 kHz."""
    return rate * max(1, round(64000 / rate))


def best_lag(sent: Samples, received: Samples, max_lag: int) -> int:
    """The delay in samples (0..max_lag) at which ``received`` best matches ``sent``: the
    peak of their cross-correlation, computed through the FFT."""
    size = 1 << int(np.ceil(np.log2(len(sent) + len(received))))
    spectrum = np.fft.rfft(received, size) * np.conj(np.fft.rfft(sent, size))
    correlation = np.fft.irfft(spectrum, size)
    return int(np.argmax(correlation[:max_lag + 1]))


@dataclass(frozen=True, slots=True)
class Match:
    """``received`` lags ``sent`` by ``lag`` samples; ``coefficient`` is the normalized
    correlation of the two once aligned by that one lag."""

    lag: int
    rate: int
    coefficient: float

    @property
    def lag_ms(self) -> float:
        return 1000.0 * self.lag / self.rate


def match(sent: Samples, received: Samples, rate: int, *, max_lag_s: float = 1.0) -> Match:
    """One lag for the whole recording (an echo only ever comes later), and the correlation
    over the stretch both cover."""
    if len(sent) == 0 or len(received) == 0:
        return Match(0, rate, 0.0)
    fine = _fine_rate(rate)
    sent, received, rate = upsample(sent, fine // rate), upsample(received, fine // rate), fine
    lag = best_lag(sent, received, int(max_lag_s * rate))
    length = min(len(sent), len(received) - lag)
    if length <= 0:
        return Match(lag, rate, 0.0)
    return Match(lag, rate, coefficient(sent[:length], received[lag:lag + length]))


@dataclass(frozen=True, slots=True)
class PiecewiseMatch:
    """``received`` aligned to ``sent`` window by window: the lag of each speech window, and
    the windows' samples side by side once aligned (``sent_parts``, ``received_parts``)."""

    rate: int
    lags_ms: tuple[float, ...]
    sent_parts: Samples = field(repr=False, compare=False)
    received_parts: Samples = field(repr=False, compare=False)

    @property
    def coefficient(self) -> float:
        """All windows scored together: sum <a_i, b_i> / sqrt(sum |a_i|^2 sum |b_i|^2)."""
        return coefficient(self.sent_parts, self.received_parts)

    @property
    def envelope_coefficient(self) -> float:
        """How the aligned windows' telephone-band loudness envelopes correlate."""
        return envelope_coefficient(self.sent_parts, self.received_parts, self.rate)

    @property
    def lag_steps(self) -> int:
        """How often the delay changed (by more than a millisecond) between windows."""
        return sum(1 for a, b in zip(self.lags_ms, self.lags_ms[1:], strict=False)
                   if abs(a - b) > 1.0)


def piecewise_match(sent: Samples, received: Samples, rate: int, *, window_s: float = 0.25,
                    max_lag_s: float = 1.0) -> PiecewiseMatch:
    """Align each ``window_s`` stretch of speech in ``sent`` to ``received`` on its own.

    An adaptive jitter buffer may lengthen its delay in mid-call when packets come late (a
    loaded machine), so the echo's delay can step once or twice; one lag for the whole call
    would then score everything after the step as noise although every sample came back.
    Here each window gets its own lag and the windows are scored together, so only a step
    inside a window costs a little; lost, garbled, faded or zero-padded audio still costs.
    Windows quieter than a fifth of the loudest (pauses) are left out: no waveform to align.
    The alignment is done at 64 kHz or more (see :func:`upsample`)."""
    fine = _fine_rate(rate)
    sent, received, rate = upsample(sent, fine // rate), upsample(received, fine // rate), fine
    size = int(window_s * rate)
    max_lag = int(max_lag_s * rate)
    starts = range(0, max(len(sent) - size, 0) + 1, size)
    loudness = [float(np.sqrt(np.mean(sent[i:i + size] ** 2))) for i in starts]
    loudest = max(loudness, default=0.0)
    sent_parts: list[Samples] = []
    received_parts: list[Samples] = []
    lags: list[float] = []
    for start, level in zip(starts, loudness, strict=True):
        if loudest == 0.0 or level < 0.2 * loudest:
            continue
        a = sent[start:start + size]
        region = received[start:start + size + max_lag]
        if len(region) < size:
            break
        lag = best_lag(a, region, min(max_lag, len(region) - size))
        sent_parts.append(a)
        received_parts.append(region[lag:lag + size])
        lags.append(round(1000.0 * lag / rate, 2))
    empty = np.zeros(0, dtype=np.float64)
    return PiecewiseMatch(rate, tuple(lags),
                          np.concatenate(sent_parts) if sent_parts else empty,
                          np.concatenate(received_parts) if received_parts else empty)


def band_envelope(samples: Samples, rate: int, *, low: float = 300.0, high: float = 3400.0,
                  frame_ms: int = 10) -> Samples:
    """The loudness contour of the telephone band: the signal band-limited to low..high Hz
    (FFT mask), then RMS per ``frame_ms``. A perceptual codec (Opus) may move phases and
    fine structure, not this."""
    spectrum = np.fft.rfft(samples)
    freqs = np.fft.rfftfreq(len(samples), 1.0 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    band = np.fft.irfft(spectrum, len(samples))
    size = rate * frame_ms // 1000
    count = len(band) // size
    frames = band[:count * size].reshape(count, size)
    envelope: Samples = np.sqrt((frames**2).mean(axis=1))
    return envelope


def envelope_coefficient(a: Samples, b: Samples, rate: int) -> float:
    """Pearson correlation of the band envelopes of two equally long signals (means removed:
    envelopes are positive, so a plain dot product would score any two sounds highly)."""
    ea, eb = band_envelope(a, rate), band_envelope(b, rate)
    if len(ea) < 2 or len(ea) != len(eb):
        return 0.0
    return coefficient(ea - ea.mean(), eb - eb.mean())
