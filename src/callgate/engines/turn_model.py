"""End of turn from the caller's voice: the Smart Turn v3 model, as ONNX on onnxruntime.

Smart Turn (BSD-2-Clause, by Daily) reads the last 8 s of a speaker's audio, prosody
included, and says how likely it is that the speaker has finished their turn: "I would like
to book" with a level voice scores about 0.05, "... a table for two." about 0.97. It is a
Whisper-tiny encoder with a classifier head (8.7 MB, int8), so one run costs one encoder pass
over 8 s of audio: ~60 ms of one core when idle, 120-270 ms on this busy 2-core machine.

The weights ship inside the ``pipecat-ai`` wheel (``smart-turn-v3.2-cpu.onnx``); the file is
located through the package's import spec without importing pipecat itself, so none of that
framework loads into the process.

:func:`end_of_turn` is a plain blocking generator over plain values, so that it can run in a
thread or a worker process: args ``{"pcm": bytes}`` (PCM16 mono at 16 kHz, the turn so far,
ending in the silence being judged); it yields one float, the probability that the turn is
complete. The model is loaded once per process.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from callgate.engines.hub import ModelUnavailable

RATE = 16000
WINDOW_SAMPLES = 8 * RATE  # the model's fixed input: 8 s, zeros in front of shorter turns
_FRAMES = WINDOW_SAMPLES // 160  # Whisper's 10 ms hop
_MODEL_FILE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
_LOCK = threading.Lock()


@cache
def default_model_path() -> Path:
    """The Smart Turn ONNX file inside the installed ``pipecat-ai`` package (looked up once:
    every session asks, and the search walks ``sys.path``)."""
    spec = importlib.util.find_spec("pipecat")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder).joinpath(*_MODEL_FILE)
        if path.is_file():
            return path
    raise ModelUnavailable("no Smart Turn model found: install pipecat-ai "
                           "(pip install 'callgate[local]')")


class SmartTurn:
    """A loaded Smart Turn model; stateless, shared by every call of the process."""

    def __init__(self, path: Path) -> None:
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        options = onnxruntime.SessionOptions()
        # One thread: a run is short, and the other core is busy with speech recognition.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session: Any = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"])
        # Whisper's log-mel front end (80 bins, 25 ms window, 10 ms hop), as the model was
        # trained on; faster-whisper's NumPy implementation is already a dependency.
        self._features = FeatureExtractor(feature_size=80, chunk_length=8)

    def probability(self, samples: np.ndarray[Any, np.dtype[np.float32]]) -> float:
        """Probability that the speech in ``samples`` (16 kHz float) is a finished turn."""
        window = samples[-WINDOW_SAMPLES:]
        window = np.pad(window, (WINDOW_SAMPLES - len(window), 0))
        # The training pipeline normalised each clip to zero mean and unit variance.
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        features = self._features(window.astype(np.float32), padding=0)[:, :_FRAMES]
        out = self.session.run(None, {"input_features": features[None].astype(np.float32)})
        return float(np.asarray(out[0]).reshape(-1)[0])


@cache
def _load(path: Path) -> SmartTurn:
    return SmartTurn(path)


def load_smart_turn(path: Path | None = None) -> SmartTurn:
    """The process-wide model (default: the packaged one), loaded once (blocking)."""
    with _LOCK:
        return _load(path or default_model_path())


def end_of_turn(args: dict[str, Any], stop: threading.Event) -> Iterator[float]:
    """Blocking: the probability that the turn in ``args["pcm"]`` is complete."""
    pcm: bytes = args["pcm"]
    samples = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float32) / 32768.0
    model = load_smart_turn()
    if not stop.is_set():
        yield model.probability(samples)
