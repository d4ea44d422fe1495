"""LiveKit Agents' OpenAI ``RealtimeModel`` pointed at callgate (only the base URL changed):
an agent with instructions and one function tool answers ``session.run``, and every LLM
request, the tool follow-up included, carries the agent's instructions.

LiveKit's ``generate_reply`` sends ``response.create`` with ``instructions: null``; that null
must leave the session's instructions in force.
"""

from __future__ import annotations

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

agents = pytest.importorskip("livekit.agents")
lk_openai = pytest.importorskip("livekit.plugins.openai")

pytestmark = pytest.mark.anyio


class Receptionist(agents.Agent):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(instructions=INSTRUCTIONS)
        self.asked: list[str] = []

    @agents.function_tool
    async def opening_hours(self, context: agents.RunContext, day: str) -> str:
        """The clinic's opening hours on a day of the week."""
        self.asked.append(day)
        return TOOL_RESULT


async def test_agent_answers_with_its_instructions_and_tool() -> None:
    assert Receptionist.opening_hours.__name__ == TOOL_NAME
    async with gateway(tool_then_answer()) as gw:
        model = lk_openai.realtime.RealtimeModel(base_url=gw.base_url, api_key=API_KEY,
                                                 model="gpt-realtime")
        agent = Receptionist()
        async with agents.utils.http_context.open(), \
                agents.AgentSession(llm=model) as session:
            await session.start(agent)
            result = await session.run(user_input="When are you open on Monday?")
            result.expect.contains_function_call(name=TOOL_NAME)
            result.expect.contains_function_call_output()
            result.expect.contains_message(role="assistant")
        assert agent.asked == ["Monday"]
        requests = gw.chat_requests()
        assert len(requests) >= 2, requests
        for request in requests:
            assert any(INSTRUCTIONS in p for p in system_prompts(request)), request["messages"]
        follow_up = requests[-1]["messages"]
        assert any(m.get("role") == "tool" and TOOL_RESULT in str(m.get("content"))
                   for m in follow_up), follow_up
