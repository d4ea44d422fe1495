"""callgate's Realtime WebSocket in front of a recording OpenAI-compatible LLM server, for
agent frameworks that are pointed at callgate by changing only their base URL.

The gateway serves ``/v1/realtime`` under uvicorn on loopback; every session runs the
``openai-compatible`` cascade engine with its stages on the test peer (tests/engines/peer.py),
which scripts the chat answers, records each chat request and answers speech with a short
tone, so a reply takes milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from callgate.api.realtime_ws import make_realtime_router
from callgate.config import ModelRoute, load
from callgate.engines.base import Engine
from callgate.engines.registry import create_engine
from callgate.realtime.registry import SessionRegistry
from tests.engines.peer import PeerState, Reply, serve
from tests.realtime.doubles import EnergyVad, tone

API_KEY = "sk-callgate-interop"
INSTRUCTIONS = "You are Ada, the receptionist of the Elm Street clinic. Answer in one sentence."
TOOL_NAME = "opening_hours"
TOOL_RESULT = "9 am to 5 pm"


@dataclass
class Gateway:
    base_url: str  # http://127.0.0.1:PORT/v1, as given to an SDK
    peer: PeerState

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/realtime"

    def chat_requests(self) -> list[dict[str, Any]]:
        return list(self.peer.requests)


def tool_then_answer(arguments: str = '{"day": "Monday"}') -> list[Reply]:
    """The LLM calls the tool first, then answers with its result."""
    return [Reply(tool_calls=[{"id": "call_hours_1", "name": TOOL_NAME,
                               "arguments": arguments}]),
            Reply(["We are open ", "9 am to 5 pm on Monday."])]


def system_prompts(request: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in request["messages"] if m.get("role") == "system"]


@contextlib.asynccontextmanager
async def gateway(replies: list[Reply]) -> AsyncIterator[Gateway]:
    peer = PeerState(replies=list(replies), speech=tone(200, 3000))
    with serve(peer) as peer_url:
        settings = load(api_key=API_KEY, default_model="peer", models={
            "peer": ModelRoute(engine="openai-compatible", url=peer_url,
                               llm_model="peer-model")})

        async def engine_factory(model: str) -> Engine:
            return await create_engine(model, settings)

        registry = SessionRegistry(engine_factory, vad_factory=EnergyVad,
                                   same_engine=settings.same_engine)
        app = FastAPI()
        app.include_router(make_realtime_router(registry, settings))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, ws="websockets-sansio",
                                               log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield Gateway(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", peer)
        finally:
            await registry.close_all()
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()
