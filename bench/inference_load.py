"""Keep the local engine's models busy beside a media benchmark.

Each talker is a Realtime WebSocket session on the ``local`` engine (``/v1/realtime?model=
local``): it appends a spoken question, commits it and asks for a response, waits for
``response.done``, and asks again, so STT, the LLM and TTS run back to back the whole time
the media benchmark measures the gateway's RTP pacing beside them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import websockets

ENGINE_RATE = 24000
QUESTIONS = ["What time does your office open tomorrow?",
             "Can you tell me the weather for today?",
             "How do I reset my password?"]


def spoken(text: str, rate: int) -> bytes:
    """``text`` said by espeak-ng, PCM16 mono at ``rate``."""
    with tempfile.TemporaryDirectory() as folder:
        wav_path = Path(folder) / "say.wav"
        subprocess.run(["espeak-ng", "-w", str(wav_path), text], check=True, timeout=30)
        with wave.open(str(wav_path)) as wav:
            source = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return bytes(soxr.resample(pcm, source, rate).astype("<i2").tobytes())


class InferenceLoad:
    def __init__(self, http_port: int, talkers: int) -> None:
        self.url = f"ws://127.0.0.1:{http_port}/v1/realtime?model=local"
        self.talkers = talkers
        self.turns = 0
        self.failed = 0
        self._questions = [base64.b64encode(spoken(q, ENGINE_RATE)).decode()
                           for q in QUESTIONS]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._talk(i)) for i in range(self.talkers)]

    async def stop(self) -> dict[str, Any]:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return {"talkers": self.talkers, "turns": self.turns, "failed_turns": self.failed}

    async def _talk(self, index: int) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "max_output_tokens": 30,
                "instructions": "You are a receptionist. Answer in one short sentence.",
                "audio": {"input": {"turn_detection": None}}}}))
            turn = index
            while True:
                question = self._questions[turn % len(self._questions)]
                turn += 1
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": question}))
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                await ws.send(json.dumps({"type": "response.create"}))
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.done":
                        # "incomplete" is the 30-token cap: a full turn all the same.
                        ok = event["response"]["status"] in ("completed", "incomplete")
                        self.turns += ok
                        self.failed += not ok
                        break
