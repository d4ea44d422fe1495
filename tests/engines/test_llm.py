from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from callgate.engines.base import ResponseRequest, TextDelta, ToolCall, ToolCallDelta
from callgate.engines.llm import (
    ChatCompletionsClient,
    ChunkAccumulator,
    LlmDone,
    LlmError,
    LlmEvent,
    LlmUnavailable,
    chat_messages,
    chat_payload,
    sse_data,
)

from .peer import PeerState, Reply, closed_port_url

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
CONVERSATION: list[dict[str, Any]] = [
    {"type": "message", "role": "user",
     "content": [{"type": "input_audio", "transcript": "what is the weather like today"}]},
    {"type": "message", "role": "assistant",
     "content": [{"type": "output_audio", "transcript": "Let me check."}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather",
     "arguments": '{"city": "Paris"}'},
    {"type": "function_call", "call_id": "call_2", "name": "get_weather",
     "arguments": '{"city": "Rome"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'},
    {"type": "function_call_output", "call_id": "call_2", "output": '{"sky": "rain"}'},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"},
                                                     {"type": "input_image", "image_url": "x"}]},
]


def test_conversation_items_become_chat_messages() -> None:
    request = ResponseRequest("You are a phone agent.", CONVERSATION)
    assert chat_messages(request) == [
        {"role": "system", "content": "You are a phone agent."},
        {"role": "user", "content": "what is the weather like today"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"sky": "rain"}'},
        {"role": "user", "content": "thanks"},
    ]


def test_tools_choice_and_limits_are_converted() -> None:
    request = ResponseRequest("", [], tools=[WEATHER_TOOL, {"type": "mcp", "server_label": "x"}],
                              tool_choice={"type": "function", "name": "get_weather"},
                              max_output_tokens=99)
    payload = chat_payload(request, "m")
    assert payload["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER_TOOL["parameters"]}}]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert payload["max_tokens"] == 99
    assert payload["messages"] == []
    assert "tools" not in chat_payload(ResponseRequest("hi", []), "m")


def test_sse_events_are_reassembled() -> None:
    async def lines() -> Any:
        for line in [": comment", "event: x", "data: {\"a\":", "data: 1}", "", "", "data:[DONE]"]:
            yield line

    async def main() -> list[str]:
        return [data async for data in sse_data(lines())]

    assert asyncio.run(main()) == ['{"a":\n1}', "[DONE]"]


def test_accumulator_joins_tool_call_fragments() -> None:
    acc = ChunkAccumulator()
    acc.feed({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]})
    acc.feed({"choices": [{"delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]})
    assert acc.finish() == [ToolCall("c1", "f", '{"a": 1}'), LlmDone("tool_calls", {})]


async def _collect(url: str, request: ResponseRequest, model: str | None = None
                   ) -> list[LlmEvent]:
    client = ChatCompletionsClient(url, model, "sk-test")
    try:
        return [event async for event in client.stream(request)]
    finally:
        await client.aclose()


def test_streamed_text_and_a_tool_call_from_a_server(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(["Let me", " check", " that."], tool_calls=[
        {"id": "call_9", "name": "get_weather", "arguments": '{"city": "Paris"}'}]))
    request = ResponseRequest("You are a phone agent.", CONVERSATION[:1], tools=[WEATHER_TOOL])
    events = asyncio.run(_collect(url, request))
    # the arguments come as the server sends them (in two pieces), then the whole call
    assert events == [TextDelta("Let me"), TextDelta(" check"), TextDelta(" that."),
                      ToolCallDelta("call_9", "get_weather", '{"city":'),
                      ToolCallDelta("call_9", "get_weather", ' "Paris"}'),
                      ToolCall("call_9", "get_weather", '{"city": "Paris"}'),
                      LlmDone("tool_calls", {"input_tokens": 11, "output_tokens": 3,
                                             "total_tokens": 14})]
    sent = state.requests[0]
    assert sent["model"] == "peer-model"  # discovered from /models
    assert sent["stream"] is True
    assert sent["messages"][0] == {"role": "system", "content": "You are a phone agent."}
    assert sent["messages"][1] == {"role": "user", "content": "what is the weather like today"}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_http_errors_are_reported_with_the_server_message(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(status=503))
    with pytest.raises(LlmError, match="answered 503: scripted failure"):
        asyncio.run(_collect(url, ResponseRequest("", []), model="m"))


@pytest.mark.parametrize("raw", ["data: {not json\n\n", 'data: {"choices": []}\n\n'])
def test_a_bad_stream_is_an_error(peer: tuple[str, PeerState], raw: str) -> None:
    url, state = peer
    state.replies.append(Reply(raw=raw))
    with pytest.raises(LlmError, match=r"bad stream|ended before"):
        asyncio.run(_collect(url, ResponseRequest("", []), model="m"))


def test_an_error_event_in_the_stream_is_an_error(peer: tuple[str, PeerState]) -> None:
    url, state = peer
    state.replies.append(Reply(raw="data: " + json.dumps({"error": {"message": "overloaded"}})
                               + "\n\n"))
    with pytest.raises(LlmError, match="overloaded"):
        asyncio.run(_collect(url, ResponseRequest("", []), model="m"))


def test_connection_refused_means_unavailable() -> None:
    with pytest.raises(LlmUnavailable, match="cannot reach the language model"):
        asyncio.run(_collect(closed_port_url(), ResponseRequest("", []), model="m"))
