"""A real OpenAI-compatible HTTP server on loopback, as the engines' test peer.

Chat completions answer from a script the test sets (so tests can check what was asked and
control timing, tool calls and failures); ``/audio/transcriptions`` and ``/audio/speech`` run
the real Whisper tiny and Piper models. It speaks the wire format of OpenAI's API: SSE
``chat.completion.chunk`` streams ending in ``data: [DONE]``, multipart transcription
uploads, raw 24 kHz PCM speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import io
import json
import socket
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


@dataclass
class Reply:
    """One scripted chat answer: text pieces (each one SSE chunk), then tool calls."""

    pieces: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, str]] = field(default_factory=list)  # name, arguments, id
    delay: float = 0.0  # seconds between pieces
    pause_after: dict[int, float] = field(default_factory=dict)  # piece index -> extra pause
    finish_reason: str | None = None
    status: int = 200
    raw: str | None = None  # sent as the whole body instead (bad streams)


@dataclass
class PeerState:
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    transcriptions: list[dict[str, Any]] = field(default_factory=list)
    speech_requests: list[dict[str, Any]] = field(default_factory=list)
    stream_closed_at: float | None = None
    stream_completed: bool = False
    last_piece_sent_at: float | None = None
    speech: bytes | None = None  # answered to /audio/speech instead of running Piper


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    doc = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": 0,
           "model": "peer-model", "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]}
    return f"data: {json.dumps(doc)}\n\n"


def make_app(state: PeerState) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "peer-model", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        state.requests.append(body)
        reply = state.replies.pop(0) if state.replies else Reply(["Hello."])
        if reply.status != 200:
            return JSONResponse({"error": {"message": "scripted failure", "type": "server"}},
                                status_code=reply.status)
        if reply.raw is not None:
            return Response(reply.raw, media_type="text/event-stream")
        state.stream_closed_at = None
        state.stream_completed = False

        async def events() -> AsyncIterator[str]:
            try:
                yield _chunk({"role": "assistant", "content": ""})
                for index, piece in enumerate(reply.pieces):
                    await asyncio.sleep(reply.delay + reply.pause_after.get(index, 0.0))
                    yield _chunk({"content": piece})
                    state.last_piece_sent_at = time.monotonic()
                for index, call in enumerate(reply.tool_calls):
                    args = call["arguments"]
                    half = len(args) // 2
                    # Split the arguments over two chunks, as real servers do.
                    yield _chunk({"tool_calls": [{"index": index, "id": call["id"],
                                                  "type": "function",
                                                  "function": {"name": call["name"],
                                                               "arguments": args[:half]}}]})
                    yield _chunk({"tool_calls": [{"index": index,
                                                  "function": {"arguments": args[half:]}}]})
                finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
                yield _chunk({}, finish)
                usage = {"prompt_tokens": 11, "completion_tokens": len(reply.pieces),
                         "total_tokens": 11 + len(reply.pieces)}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                state.stream_completed = True
            finally:
                state.stream_closed_at = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> dict[str, Any]:
        fields = _multipart(request.headers["content-type"], await request.body())
        state.transcriptions.append({k: v for k, v in fields.items() if k != "file"})
        with wave.open(io.BytesIO(fields["file"])) as wav:
            rate = wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
        from callgate.engines.stt import WhisperTranscriber

        text = ""
        async for item in WhisperTranscriber().transcribe(pcm, rate):
            text = getattr(item, "text", text)
        return {"text": text}

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = await request.json()
        state.speech_requests.append(body)
        if body.get("response_format") != "pcm":
            return JSONResponse({"error": {"message": "pcm only"}}, status_code=400)
        if state.speech is not None:
            return Response(state.speech, media_type="audio/pcm")
        return StreamingResponse(_speak(body["input"]), media_type="audio/pcm")

    return app


def _speak(text: str) -> Iterator[bytes]:
    from callgate.engines.tts import load_voice

    voice = load_voice()
    for chunk in voice.synthesize(text):
        audio = soxr.resample(chunk.audio_float_array, voice.config.sample_rate, 24000)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        # Odd-sized pieces on purpose: a client must reassemble samples split over chunks.
        for offset in range(0, len(pcm), 4801):
            yield pcm[offset:offset + 4801]


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields[str(name)] = payload if part.get_filename() else payload.decode()
    return fields


@contextlib.contextmanager
def serve(state: PeerState) -> Iterator[str]:
    """Run the peer on a loopback port in a thread; yields its base URL (ending in /v1)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test peer did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
