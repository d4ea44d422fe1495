"""Pipecat's OpenAIRealtimeLLMService as an application would run it, for test_pipecat.py.

Run by the Python of the environment that has pipecat-ai (it pins soxr~=1.0.0, which callgate
cannot share); imports nothing of callgate. Arguments: the Realtime WebSocket URL, the API
key, the instructions, the tool's name and the result it returns. It asks one question, lets
the model call the tool, waits for the answer after it, and prints a JSON line with the tool
arguments it was called with.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame, LLMMessagesAppendFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner


class Replies(FrameProcessor):  # type: ignore[misc]
    """Counts the finished replies that flow down the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame):
            self.count += 1
            self.done.set()
        await self.push_frame(frame, direction)


async def main(url: str, api_key: str, instructions: str, tool: str, result: str) -> None:
    asked: list[Any] = []

    async def run_tool(params: FunctionCallParams) -> None:
        asked.append(dict(params.arguments))
        await params.result_callback(result)

    llm = OpenAIRealtimeLLMService(
        api_key=api_key, base_url=url,
        settings=OpenAIRealtimeLLMService.Settings(model="gpt-realtime",
                                                   system_instruction=instructions))
    llm.register_function(tool, run_tool)
    context = LLMContext(tools=ToolsSchema(standard_tools=[FunctionSchema(
        name=tool, description="The clinic's opening hours on a day of the week.",
        properties={"day": {"type": "string"}}, required=["day"])]))
    aggregators = LLMContextAggregatorPair(context)
    replies = Replies()
    worker = PipelineWorker(Pipeline([aggregators.user(), llm, replies,
                                      aggregators.assistant()]))
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await worker.queue_frames([LLMMessagesAppendFrame(
            [{"role": "user", "content": "When are you open on Monday?"}], run_llm=True)])
        while not (asked and replies.count >= 2):  # the tool's turn, then the answer
            replies.done.clear()
            await asyncio.wait_for(replies.done.wait(), 20)
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 10)
    print(json.dumps({"asked": asked}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
