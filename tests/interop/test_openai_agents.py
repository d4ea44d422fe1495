"""The OpenAI Agents SDK's ``RealtimeRunner`` pointed at callgate (only the URL changed): a
realtime agent with instructions and one function tool answers a typed message, calls the
tool, answers with its result, and every LLM request carries the agent's instructions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .harness import (
    API_KEY,
    INSTRUCTIONS,
    TOOL_NAME,
    TOOL_RESULT,
    gateway,
    system_prompts,
    tool_then_answer,
)

sdk = pytest.importorskip("agents")
realtime = pytest.importorskip("agents.realtime")

pytestmark = pytest.mark.anyio


async def test_realtime_agent_answers_with_its_instructions_and_tool() -> None:
    asked: list[str] = []

    @sdk.function_tool(name_override=TOOL_NAME)
    def opening_hours(day: str) -> str:
        """The clinic's opening hours on a day of the week."""
        asked.append(day)
        return TOOL_RESULT

    agent = realtime.RealtimeAgent(name="Ada", instructions=INSTRUCTIONS,
                                   tools=[opening_hours])
    async with gateway(tool_then_answer()) as gw:
        runner = realtime.RealtimeRunner(starting_agent=agent)
        session = await runner.run(model_config={
            "url": f"{gw.ws_url}?model=gpt-realtime", "api_key": API_KEY})
        seen: list[str] = []
        errors: list[Any] = []

        async def converse() -> None:
            async with session:
                await session.send_message("When are you open on Monday?")
                async for event in session:
                    seen.append(event.type)
                    if event.type == "error":
                        errors.append(event.error)
                    if event.type == "agent_end" and "tool_end" in seen:
                        return

        await asyncio.wait_for(converse(), 20)
        assert not errors, errors
        assert asked == ["Monday"]
        requests = gw.chat_requests()
        assert len(requests) == 2, requests
        for request in requests:
            assert any(INSTRUCTIONS in p for p in system_prompts(request)), request["messages"]
        assert any(m.get("role") == "tool" and TOOL_RESULT in str(m.get("content"))
                   for m in requests[-1]["messages"])
