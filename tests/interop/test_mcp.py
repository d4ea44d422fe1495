"""MCP tools on a cascade session, driven through the openai SDK: the server's tools are
listed, the model's call runs on a real MCP server (built with the ``mcp`` SDK), and the
answer uses its result; with ``require_approval`` the application approves first."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engines.peer import Reply

from .harness import gateway
from .mcp_server import HOURS, serve_mcp
from .test_session_fields import client, events_until

pytestmark = pytest.mark.anyio

CALL = {"id": "call_mcp_1", "name": "opening_hours", "arguments": '{"day": "Monday"}'}


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def ask(conn: Any, question: str) -> None:
    await conn.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text",
                                                        "text": question}]})
    await conn.response.create()


async def test_the_model_calls_an_mcp_tool_and_answers_with_its_result() -> None:
    with serve_mcp() as url:
        async with gateway([Reply(tool_calls=[CALL]), Reply(["We open at 9."])]) as gw:
            sdk = client(gw)
            async with sdk.realtime.connect(model="gpt-realtime") as conn:
                await events_until(conn, "session.created")
                await conn.session.update(session={
                    "type": "realtime", "output_modalities": ["text"],
                    "tools": [{"type": "mcp", "server_label": "clinic", "server_url": url,
                               "allowed_tools": ["opening_hours"],
                               "require_approval": "never"}]})
                await events_until(conn, "mcp_list_tools.completed", 10)
                item = (await events_until(conn, "conversation.item.done"))[-1]["item"]
                assert [t["name"] for t in item["tools"]] == ["opening_hours"]
                await ask(conn, "When do you open on Monday?")
                events = await events_until(conn, "response.done", 10)
            await sdk.close()
    order = ["response.output_item.added", "response.mcp_call_arguments.delta",
             "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
             "response.mcp_call.completed", "response.output_text.delta", "response.done"]
    seen = kinds(events)
    assert [seen.index(k) for k in order] == sorted(seen.index(k) for k in order), seen
    done = events[-1]["response"]
    assert done["status"] == "completed"
    call = done["output"][0]
    assert (call["type"], call["name"], call["output"]) == ("mcp_call", "opening_hours", HOURS)
    assert done["output"][1]["content"][0]["text"] == "We open at 9."
    # the model's second round read the tool's result
    follow_up = gw.chat_requests()[1]["messages"]
    assert any(m.get("role") == "tool" and m.get("content") == HOURS for m in follow_up)
    assert [t["function"]["name"] for t in gw.chat_requests()[0]["tools"]] == \
        ["opening_hours"]


async def test_an_mcp_call_waits_for_the_applications_approval() -> None:
    with serve_mcp() as url:
        async with gateway([Reply(tool_calls=[CALL]), Reply(["We open at 9."])]) as gw:
            sdk = client(gw)
            async with sdk.realtime.connect(model="gpt-realtime") as conn:
                await events_until(conn, "session.created")
                await conn.session.update(session={
                    "type": "realtime", "output_modalities": ["text"],
                    "tools": [{"type": "mcp", "server_label": "clinic", "server_url": url}]})
                await events_until(conn, "mcp_list_tools.completed", 10)
                await ask(conn, "When do you open on Monday?")
                first = (await events_until(conn, "response.done", 10))[-1]["response"]
                (request,) = first["output"]
                assert request["type"] == "mcp_approval_request"
                assert request["arguments"] == CALL["arguments"]
                assert len(gw.chat_requests()) == 1  # nothing ran yet
                await conn.conversation.item.create(item={
                    "id": "mcpr_1", "type": "mcp_approval_response",
                    "approval_request_id": request["id"], "approve": True})
                await conn.response.create()
                second = (await events_until(conn, "response.done", 10))[-1]["response"]
            await sdk.close()

    call = second["output"][0]
    assert call["type"] == "mcp_call" and call["approval_request_id"] == request["id"]
    assert call["output"] == HOURS
    assert second["output"][1]["content"][0]["text"] == "We open at 9."


async def test_an_unreachable_mcp_server_is_reported() -> None:
    async with gateway([]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "tools": [{
                "type": "mcp", "server_label": "gone", "server_url": "http://127.0.0.1:9/mcp"}]})
            events = await events_until(conn, "mcp_list_tools.failed", 10)
        await sdk.close()
    assert "error" not in kinds(events)
