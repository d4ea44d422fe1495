"""Pipecat's ``OpenAIRealtimeLLMService`` pointed at callgate (only the base URL changed): a
pipeline with instructions and one function tool answers a typed question, calls the tool,
answers with its result, and every LLM request carries the instructions.

pipecat-ai pins soxr~=1.0.0 and callgate needs soxr>=1.1, so Pipecat runs from its own
environment (``make`` builds ``.venv-pipecat``; CALLGATE_PIPECAT_PYTHON names another) as a
separate process: pipecat_client.py, an application talking to this gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.conftest import repo_root

from .harness import (
    API_KEY,
    INSTRUCTIONS,
    TOOL_NAME,
    TOOL_RESULT,
    gateway,
    system_prompts,
    tool_then_answer,
)

pytestmark = pytest.mark.anyio

PYTHON = Path(os.environ.get("CALLGATE_PIPECAT_PYTHON")
              or repo_root() / ".venv-pipecat" / "bin" / "python")


async def test_pipeline_answers_with_its_instructions_and_tool() -> None:
    if not PYTHON.exists():
        pytest.skip(f"no Python with pipecat-ai at {PYTHON} (make builds .venv-pipecat)")
    async with gateway(tool_then_answer()) as gw:
        client = await asyncio.create_subprocess_exec(
            str(PYTHON), str(Path(__file__).with_name("pipecat_client.py")), gw.ws_url,
            API_KEY, INSTRUCTIONS, TOOL_NAME, TOOL_RESULT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(client.communicate(), 60)
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
        assert client.returncode == 0, err.decode()[-3000:]
        asked = json.loads(out.decode().strip().splitlines()[-1])["asked"]
        assert asked == [{"day": "Monday"}]
        requests = gw.chat_requests()
        assert len(requests) == 2, requests
        for request in requests:
            assert any(INSTRUCTIONS in p for p in system_prompts(request)), request["messages"]
        assert any(m.get("role") == "tool" and TOOL_RESULT in str(m.get("content"))
                   for m in requests[-1]["messages"])
