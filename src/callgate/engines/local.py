"""The cascade engine (STT -> LLM -> TTS), and the embedded local pipeline built on it.

One :class:`CascadeEngine` runs every cascade: it is given three stage objects (a transcriber,
a chat model and a speaker) and streams at every stage. The LLM stream is read by its own task
and cut into clauses; each finished clause is spoken while the model keeps writing, so the
caller hears the first clause while the rest of the answer is still being generated. Closing
the ``respond`` iterator (barge-in, ``response.cancel``) cancels the reader, which closes the
LLM stream, and closes the speaker, which stops synthesis.

:class:`LocalEngine` fills the stages with the embedded models (faster-whisper, Piper, and an
OpenAI-compatible server or llama.cpp for the LLM); ``openai_compat`` fills them with HTTP
clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from callgate.config import ModelRoute, Settings
from callgate.engines.base import (
    AudioDelta,
    Engine,
    EngineError,
    EngineEvent,
    ResponseDone,
    ResponseRequest,
    Stage,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    TranscriptDelta,
    TranscriptDone,
)
from callgate.engines.clauses import ClauseSplitter
from callgate.engines.llama import DEFAULT_THREADS, LlamaCppChat, bundled_gguf
from callgate.engines.llm import (
    ChatCompletionsClient,
    ChatModel,
    LlmDone,
    LlmError,
    LlmUnavailable,
    UnavailableChat,
)
from callgate.engines.stt import WhisperTranscriber
from callgate.engines.supervisor import WorkerCrashed, WorkerProcess
from callgate.engines.support import cascade_unsupported
from callgate.engines.threads import closing
from callgate.engines.tts import PiperSpeech
from callgate.log import event

logger = logging.getLogger(__name__)

UNAVAILABLE_SPEECH = "Sorry, the language model is not available right now."
FAILED_SPEECH = "Sorry, something went wrong. Please try again."
NO_LLM = ("no language model is configured: set CALLGATE_LLM_BASE_URL to an OpenAI-compatible "
          "server, or CALLGATE_LLM_MODEL to a GGUF file or repository for in-process llama.cpp, "
          "or install 'callgate[llama]' for the bundled offline model")
# AudioDelta size cap: 200 ms keeps session events small and barge-in truncation precise.
MAX_DELTA_BYTES = Engine.sample_rate * 2 // 5


class Transcriber(Protocol):
    def transcribe(self, pcm: bytes, sample_rate: int = ..., *, language: str | None = None,
                   prompt: str | None = None
                   ) -> AsyncIterator[TranscriptDelta | TranscriptDone]:
        """``language``/``prompt``: the session's transcription settings (None: the
        stage's own)."""
        ...


class Speaker(Protocol):
    def speak(self, text: str, *, voice: str | None = None, speed: float = 1.0
              ) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class _Clause:
    text: str


@dataclass(frozen=True, slots=True)
class _Failed:
    error: EngineError
    unavailable: bool


_Item = Stage | _Clause | TextDelta | ToolCallDelta | ToolCall | LlmDone | _Failed


class CascadeEngine(Engine):
    """STT, LLM and TTS stage objects behind the Engine interface."""

    def __init__(self, *, stt: Transcriber, llm: ChatModel, tts: Speaker, name: str,
                 context_tokens: int | None = None) -> None:
        self.stt, self.llm, self.tts, self.name = stt, llm, tts, name
        self.transcription: dict[str, Any] = {}  # the session's audio.input.transcription
        # an in-process model knows its own window; a server's is configured
        self.context_tokens = getattr(llm, "n_ctx", None) or context_tokens

    def unsupported(self, session: dict[str, Any]) -> tuple[str, str] | None:
        refused = cascade_unsupported(session)
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        knows = getattr(self.tts, "knows", None)
        if refused is None and isinstance(voice, str) and knows is not None and not knows(voice):
            return "audio.output.voice", (f"{voice!r} is neither one of OpenAI's voices, nor "
                                          "in the voice table (CALLGATE_VOICES), nor a Piper "
                                          "voice")
        return refused

    def stages(self) -> dict[str, str]:
        """What runs each stage (for the start-up log: which LLM is this, really?)."""
        return {name: f"{type(stage).__name__}({getattr(stage, 'model', None) or ''})"
                for name, stage in (("stt", self.stt), ("llm", self.llm), ("tts", self.tts))}

    async def update(self, session: dict[str, Any]) -> None:
        audio_in = (session.get("audio") or {}).get("input") or {}
        self.transcription = dict(audio_in.get("transcription") or {})

    async def start(self, session: dict[str, Any]) -> None:
        """Load the embedded models now (off the loop) so the first turn does not wait."""
        await self.update(session)
        loads = [load() for stage in (self.stt, self.llm, self.tts)
                 if (load := getattr(stage, "load", None)) is not None]
        for result in await asyncio.gather(*loads, return_exceptions=True):
            if isinstance(result, Exception):
                # Not fatal here: the turn that needs the model reports it to the session.
                event(logger, "engine_preload_failed", logging.WARNING, engine=self.name,
                      error=str(result))

    async def aclose(self) -> None:
        await self.llm.aclose()
        for stage in (self.stt, self.tts):
            close = getattr(stage, "aclose", None)
            if close is not None:
                await close()

    async def transcribe(self, pcm: bytes) -> AsyncIterator[TranscriptDelta | TranscriptDone
                                                            | Stage | EngineError]:
        try:
            async with closing(self.stt.transcribe(
                    pcm, self.sample_rate, language=self.transcription.get("language"),
                    prompt=self.transcription.get("prompt"))) as items:
                async for item in items:
                    if isinstance(item, TranscriptDone):
                        yield Stage("transcript_ready", time.monotonic())
                    yield item
        except Exception as exc:
            event(logger, "transcription_failed", logging.WARNING, engine=self.name,
                  error=str(exc))
            yield _failure(exc, "transcription", "transcription_failed")

    async def respond(self, request: ResponseRequest) -> AsyncIterator[EngineEvent]:
        audio = "audio" in request.output_modalities
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        reader = asyncio.create_task(self._read_llm(request, queue, audio))
        spoke = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Clause):
                    yield TextDelta(item.text)
                    async with closing(
                            self._speak(item.text, request, first=not spoke)) as spoken:
                        async for out in spoken:
                            spoke = spoke or isinstance(out, AudioDelta)
                            yield out
                            if isinstance(out, ResponseDone):
                                return
                elif isinstance(item, _Failed):
                    yield item.error
                    if audio and not spoke:
                        apology = UNAVAILABLE_SPEECH if item.unavailable else FAILED_SPEECH
                        yield TextDelta(apology)
                        async with closing(
                                self._speak(apology, request, first=True)) as spoken:
                            async for out in spoken:
                                if not isinstance(out, ResponseDone):
                                    yield out
                    yield ResponseDone(status="failed", reason=item.error.code)
                    return
                elif isinstance(item, LlmDone):
                    if item.finish_reason == "length":
                        yield ResponseDone("incomplete", "max_output_tokens", item.usage)
                    else:
                        yield ResponseDone("completed", None, item.usage)
                    return
                else:
                    yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_llm(self, request: ResponseRequest, queue: asyncio.Queue[_Item],
                        audio: bool) -> None:
        splitter = ClauseSplitter()
        first = True
        try:
            async for item in self.llm.stream(request):
                if first and isinstance(item, TextDelta | ToolCallDelta | ToolCall):
                    queue.put_nowait(Stage("llm_first_token", time.monotonic()))
                    first = False
                if isinstance(item, TextDelta):
                    if audio:
                        for clause in splitter.feed(item.text):
                            queue.put_nowait(_Clause(clause))
                    else:
                        queue.put_nowait(item)
                elif isinstance(item, LlmDone):
                    rest = splitter.flush()
                    if rest is not None:
                        queue.put_nowait(_Clause(rest))
                    queue.put_nowait(item)
                    return
                else:
                    queue.put_nowait(item)
            raise LlmError("the language model stream ended without a result")
        except LlmError as exc:
            event(logger, "llm_failed", logging.WARNING, engine=self.name, error=str(exc))
            queue.put_nowait(_Failed(EngineError(str(exc), exc.code),
                                     isinstance(exc, LlmUnavailable)))
        except WorkerCrashed as exc:
            event(logger, "llm_failed", logging.WARNING, engine=self.name, error=str(exc))
            queue.put_nowait(_Failed(_failure(exc, "the language model", "llm_error"), False))
        except Exception as exc:  # a bug or an unexpected library error: still answer
            logger.exception("llm_failed")
            queue.put_nowait(_Failed(_failure(exc, "the language model", "llm_error"), False))

    async def _speak(self, text: str, request: ResponseRequest, *, first: bool
                     ) -> AsyncIterator[Stage | AudioDelta | EngineError | ResponseDone]:
        if not text.strip():
            return
        try:
            async with closing(
                    self.tts.speak(text.strip(), voice=request.voice, speed=request.speed)
            ) as pieces:
                async for pcm in pieces:
                    if first and pcm:
                        yield Stage("tts_first_audio", time.monotonic())
                        first = False
                    for offset in range(0, len(pcm), MAX_DELTA_BYTES):
                        yield AudioDelta(pcm[offset:offset + MAX_DELTA_BYTES])
        except Exception as exc:
            event(logger, "tts_failed", logging.WARNING, engine=self.name, error=str(exc))
            yield _failure(exc, "speech synthesis", "tts_failed")
            yield ResponseDone(status="failed", reason="tts_failed")

    def unavailable_stages(self) -> list[str]:
        """Stages whose worker is crash-looping: a new session would only fail on them."""
        return [worker.stage for stage in (self.stt, self.llm, self.tts)
                if isinstance(worker := getattr(stage, "worker", None), WorkerProcess)
                and not worker.available]


def _failure(exc: Exception, what: str, code: str) -> EngineError:
    """A stage's failure as the session sees it; a dead worker is named as the stage's own."""
    if isinstance(exc, WorkerCrashed):
        return EngineError(f"{what} failed: {exc}", f"{exc.stage}_worker_failed", exc.stage)
    return EngineError(f"{what} failed: {exc}", code)


def local_chat_model(settings: Settings, route: ModelRoute | None = None) -> ChatModel:
    """The local engine's LLM: a configured server, else llama.cpp, else none (it says so)."""
    base_url = (route.llm_base_url if route else None) or settings.llm_base_url
    model = (route.llm_model if route else None) or settings.llm_model
    api_key = (route.api_key if route else None) or settings.llm_api_key
    if base_url:
        return ChatCompletionsClient(base_url, model, api_key)
    if model:
        return LlamaCppChat(model, n_threads=settings.llm_threads or DEFAULT_THREADS,
                            max_tokens=settings.llm_max_tokens)
    bundled = bundled_gguf() if settings.llm_bundled else None
    if bundled:
        # One thread: for 135M parameters a second one gains ~25 % when the CPU is idle, but
        # llama.cpp's threads spin at every barrier, and beside a busy core two of them were
        # ~3x slower than one (a short reply: 0.64 s vs 0.23 s, measured on 2 cores).
        return LlamaCppChat(bundled, n_threads=settings.llm_threads or 1,
                            max_tokens=settings.llm_max_tokens)
    return UnavailableChat(NO_LLM)


class LocalEngine(CascadeEngine):
    """The embedded pipeline: faster-whisper, the configured LLM, Piper."""

    def __init__(self, settings: Settings, route: ModelRoute | None = None) -> None:
        super().__init__(stt=WhisperTranscriber(settings.stt_model),
                         llm=local_chat_model(settings, route),
                         tts=PiperSpeech(settings.tts_voice, voices=settings.voices),
                         name="local",
                         context_tokens=settings.llm_context_tokens)
