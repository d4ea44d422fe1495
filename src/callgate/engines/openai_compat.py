"""The cascade with its stages on OpenAI-compatible HTTP servers (speaches, vLLM, OpenAI ...).

Each stage is configured on its own in the model route: ``stt_base_url``/``stt_model`` for
``POST /audio/transcriptions``, ``llm_base_url``/``llm_model`` for ``POST /chat/completions``,
``tts_base_url``/``tts_model``/``tts_voice`` for ``POST /audio/speech``; ``url`` is the default
base URL of all three and ``api_key`` their bearer key. Base URLs end in ``/v1``, as for the
``openai`` SDK. A stage with no URL at all runs embedded (Whisper, the local LLM settings,
Piper), so a route may put only the heavy stage on a server.

Speech comes back as ``response_format=pcm``: raw PCM16 mono at 24 kHz, the engine rate,
streamed as the server produces it.
"""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator

import httpx

from callgate.config import ModelRoute, Settings
from callgate.engines.base import Engine, TranscriptDelta, TranscriptDone
from callgate.engines.llm import ChatCompletionsClient, ChatModel
from callgate.engines.local import CascadeEngine, Speaker, Transcriber, local_chat_model
from callgate.engines.stt import WhisperTranscriber
from callgate.engines.tts import PiperSpeech


class ServiceError(RuntimeError):
    """An STT or TTS server failed; the message names it."""


def _client(base_url: str, api_key: str | None, timeout: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                             timeout=httpx.Timeout(timeout, connect=5.0))


async def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        body = (await response.aread()).decode("utf-8", "replace")[:200]
        raise ServiceError(f"{what} at {response.request.url} answered "
                           f"{response.status_code}: {body}")


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


class HttpTranscriber:
    """``POST /audio/transcriptions`` with the turn as a WAV file."""

    def __init__(self, base_url: str, model: str = "whisper-1", api_key: str | None = None,
                 *, language: str | None = None, timeout: float = 30.0) -> None:
        self.model = model
        self.language = language
        self._http = _client(base_url, api_key, timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def transcribe(self, pcm: bytes, sample_rate: int = Engine.sample_rate, *,
                         language: str | None = None, prompt: str | None = None
                         ) -> AsyncIterator[TranscriptDelta | TranscriptDone]:
        data = {"model": self.model, "response_format": "json"}
        if language or self.language:
            data["language"] = str(language or self.language)
        if prompt:
            data["prompt"] = prompt
        try:
            response = await self._http.post(
                "/audio/transcriptions", data=data,
                files={"file": ("turn.wav", wav_bytes(pcm, sample_rate), "audio/wav")})
        except httpx.HTTPError as exc:
            raise ServiceError(f"transcription server {self._http.base_url}: "
                               f"{exc or type(exc).__name__}") from exc
        await _check(response, "transcription server")
        try:
            text = str(response.json()["text"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"transcription server sent no text: {response.text[:200]}"
                               ) from exc
        if text:
            yield TranscriptDelta(text)
        yield TranscriptDone(text)


class HttpSpeech:
    """``POST /audio/speech`` with ``response_format=pcm``, read as it streams."""

    def __init__(self, base_url: str, model: str = "tts-1", api_key: str | None = None,
                 *, voice: str | None = None, timeout: float = 30.0) -> None:
        self.model = model
        # A configured voice wins: a server's voices rarely share OpenAI's names.
        self.voice = voice
        self._http = _client(base_url, api_key, timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def speak(self, text: str, *, voice: str | None = None, speed: float = 1.0
                    ) -> AsyncIterator[bytes]:
        body = {"model": self.model, "input": text, "voice": self.voice or voice or "alloy",
                "response_format": "pcm", "speed": speed}
        odd = b""
        try:
            async with self._http.stream("POST", "/audio/speech", json=body) as response:
                await _check(response, "speech server")
                async for data in response.aiter_bytes():
                    data = odd + data
                    # Chunks may split a sample; hand out whole samples only.
                    cut = len(data) & ~1
                    odd = data[cut:]
                    if cut:
                        yield data[:cut]
        except httpx.HTTPError as exc:
            raise ServiceError(f"speech server {self._http.base_url}: "
                               f"{exc or type(exc).__name__}") from exc


def compat_stages(settings: Settings, route: ModelRoute
                  ) -> tuple[Transcriber, ChatModel, Speaker]:
    """The three stages of an ``openai-compatible`` route (embedded where no URL is given)."""
    stt_url = route.stt_base_url or route.url
    llm_url = route.llm_base_url or route.url
    tts_url = route.tts_base_url or route.url
    stt: Transcriber = (HttpTranscriber(stt_url, route.stt_model or "whisper-1", route.api_key)
                        if stt_url else WhisperTranscriber(settings.stt_model))
    llm: ChatModel = (ChatCompletionsClient(llm_url, route.llm_model or route.model,
                                            route.api_key)
                      if llm_url else local_chat_model(settings, route))
    tts: Speaker = (HttpSpeech(tts_url, route.tts_model or "tts-1", route.api_key,
                               voice=route.tts_voice)
                    if tts_url else PiperSpeech(settings.tts_voice))
    return stt, llm, tts


class OpenAICompatEngine(CascadeEngine):
    def __init__(self, settings: Settings, route: ModelRoute) -> None:
        stt, llm, tts = compat_stages(settings, route)
        super().__init__(stt=stt, llm=llm, tts=tts, name="openai-compatible",
                         context_tokens=settings.llm_context_tokens)
