"""Pipecat's ``OpenAIRealtimeLLMService`` pointed at callgate (only the base URL changed): a
pipeline with instructions and one function tool answers a typed question, calls the tool,
answers with its result, and every LLM request carries the instructions."""

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

pytest.importorskip("pipecat")
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

pytestmark = pytest.mark.anyio


class Replies(FrameProcessor):  # type: ignore[misc]
    """Counts the finished replies that flow down the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()
        self.count = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame):
            self.count += 1
            self.done.set()
        await self.push_frame(frame, direction)


async def test_pipeline_answers_with_its_instructions_and_tool() -> None:
    asked: list[Any] = []

    async def opening_hours(params: FunctionCallParams) -> None:
        asked.append(params.arguments.get("day"))
        await params.result_callback(TOOL_RESULT)

    tools = ToolsSchema(standard_tools=[FunctionSchema(
        name=TOOL_NAME, description="The clinic's opening hours on a day of the week.",
        properties={"day": {"type": "string"}}, required=["day"])])
    async with gateway(tool_then_answer()) as gw:
        llm = OpenAIRealtimeLLMService(
            api_key=API_KEY, base_url=gw.ws_url,
            settings=OpenAIRealtimeLLMService.Settings(model="gpt-realtime",
                                                       system_instruction=INSTRUCTIONS))
        llm.register_function(TOOL_NAME, opening_hours)
        context = LLMContext(tools=tools)
        aggregators = LLMContextAggregatorPair(context)
        replies = Replies()
        task = PipelineWorker(Pipeline([aggregators.user(), llm, replies,
                                        aggregators.assistant()]))
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        running = asyncio.create_task(runner.run())
        try:
            await task.queue_frames([LLMMessagesAppendFrame(
                [{"role": "user", "content": "When are you open on Monday?"}], run_llm=True)])

            async def answered() -> None:
                while len(gw.chat_requests()) < 2 or not asked:
                    await replies.done.wait()
                    replies.done.clear()

            await asyncio.wait_for(answered(), 20)
        finally:
            await task.queue_frame(EndFrame())
            await asyncio.wait_for(running, 10)
        assert asked == ["Monday"]
        requests = gw.chat_requests()
        assert len(requests) == 2, requests
        for request in requests:
            assert any(INSTRUCTIONS in p for p in system_prompts(request)), request["messages"]
        assert any(m.get("role") == "tool" and TOOL_RESULT in str(m.get("content"))
                   for m in requests[-1]["messages"])
