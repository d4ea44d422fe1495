"""MCP tools (``{"type": "mcp", "server_label", "server_url", ...}``) for cascade sessions.

The session lists each server's tools with the official ``mcp`` SDK over Streamable HTTP when
the tool is configured (``mcp_list_tools.*`` events and an ``mcp_list_tools`` item), offers them
to the language model as functions, and when the model calls one, runs it on the server
(``response.mcp_call.*``) or first asks the application (an ``mcp_approval_request`` item,
answered by an ``mcp_approval_response`` item) as ``require_approval`` says: OpenAI's default
is to ask. The model reads an ``mcp_call`` as a function call and its result
(:func:`as_function_items`), so engines need no MCP knowledge.

Each list or call opens its own MCP session: a phone agent calls a tool a few times per call,
and a fresh session never goes stale.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from callgate.log import event
from callgate.realtime.items import Conversation
from callgate.realtime.protocol import new_id

if TYPE_CHECKING:
    from callgate.realtime.responses import Emit, ResponseRun

logger = logging.getLogger(__name__)

TIMEOUT_S = 20.0


class McpError(Exception):
    """A server that failed; ``error`` is the GA ``mcp_call.error`` object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def _http(tool: dict[str, Any]) -> httpx2.AsyncClient:
    headers = dict(tool.get("headers") or {})
    if tool.get("authorization"):
        headers["Authorization"] = f"Bearer {tool['authorization']}"
    return httpx2.AsyncClient(headers=headers, timeout=TIMEOUT_S)


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, McpError):
        return exc.error
    # the SDK wraps transport failures in exception groups; the first cause says most
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return {"type": "protocol_error", "code": -32000,
            "message": f"{type(exc).__name__}: {exc}"[:300]}


async def list_tools(tool: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's tools that ``allowed_tools`` lets through, as ``mcp_list_tools`` shows
    them; raises McpError."""
    try:
        async with _http(tool) as http, Client(streamable_http_client(
                str(tool["server_url"]), http_client=http)) as client:
            listed = await client.list_tools()
    except Exception as exc:
        raise McpError(_failure(exc)) from exc
    allowed = tool.get("allowed_tools")
    names = allowed.get("tool_names") if isinstance(allowed, dict) else allowed
    read_only = allowed.get("read_only") if isinstance(allowed, dict) else None
    out = []
    for entry in listed.tools:
        hints = entry.annotations.model_dump(exclude_none=True) if entry.annotations else None
        if names is not None and entry.name not in names:
            continue
        if read_only and not (hints or {}).get("readOnlyHint"):
            continue
        out.append({"name": entry.name, "description": entry.description or "",
                    "input_schema": entry.input_schema, "annotations": hints})
    return out


async def call_tool(tool: dict[str, Any], name: str, arguments: str) -> str:
    """The tool's text output; raises McpError (a tool error is ``tool_execution_error``)."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        raise McpError({"type": "tool_execution_error",
                        "message": f"arguments are not JSON: {arguments[:80]!r}"}) from None
    try:
        async with _http(tool) as http, Client(streamable_http_client(
                str(tool["server_url"]), http_client=http)) as client:
            result = await client.call_tool(name, args)
    except Exception as exc:
        raise McpError(_failure(exc)) from exc
    text = "\n".join(str(getattr(part, "text", "")) for part in result.content
                     if getattr(part, "type", None) == "text")
    if result.is_error:
        raise McpError({"type": "tool_execution_error", "message": text or "tool failed"})
    return text


def needs_approval(tool: dict[str, Any], name: str, hints: dict[str, Any] | None) -> bool:
    """``require_approval``: "always" (OpenAI's default), "never", or per-tool filters."""
    rule = tool.get("require_approval", "always")
    if isinstance(rule, str):
        return rule != "never"

    def matches(selector: dict[str, Any] | None) -> bool:
        if not selector:
            return False
        if selector.get("tool_names") is not None and name not in selector["tool_names"]:
            return False
        return not selector.get("read_only") or bool((hints or {}).get("readOnlyHint"))

    return not matches(rule.get("never"))


def mcp_item(tool: dict[str, Any], name: str, hints: dict[str, Any] | None) -> dict[str, Any]:
    """The output item for the model's call of ``name``: an ``mcp_call`` to run now, or an
    ``mcp_approval_request`` when the application must approve it first."""
    kind = "mcp_approval_request" if needs_approval(tool, name, hints) else "mcp_call"
    item: dict[str, Any] = {"id": new_id("mcp"), "type": kind,
                            "server_label": tool["server_label"], "name": name,
                            "arguments": ""}
    return item


def as_function_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as the language model reads it: each finished ``mcp_call`` becomes a
    function call and its output; other MCP bookkeeping items are left out."""
    answers = {item["approval_request_id"]: item for item in items
               if item.get("type") == "mcp_approval_response"}
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        answer = answers.get(item.get("id", "")) if kind == "mcp_approval_request" else None
        if answer is not None and not answer.get("approve"):
            # a declined call: the model hears that it was declined, and why
            out.append({"id": item["id"], "type": "function_call", "call_id": item["id"],
                        "name": item["name"], "arguments": item["arguments"]})
            out.append({"id": f"{item['id']}_output", "type": "function_call_output",
                        "call_id": item["id"], "output": "The user declined this call. "
                        + str(answer.get("reason") or "")})
        elif kind == "mcp_call":
            if item.get("output") is None and item.get("error") is None:
                continue
            result = item["output"] if item.get("output") is not None else \
                f"error: {item['error'].get('message')}"
            out.append({"id": item["id"], "type": "function_call", "call_id": item["id"],
                        "name": item["name"], "arguments": item["arguments"]})
            out.append({"id": f"{item['id']}_output", "type": "function_call_output",
                        "call_id": item["id"], "output": result})
        elif kind not in ("mcp_list_tools", "mcp_approval_request", "mcp_approval_response"):
            out.append(item)
    return out


class McpTools:
    """A session's MCP servers: their listed tools, and the calls the model makes on them."""

    def __init__(self, conversation: Conversation, emit: Emit,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self._conversation = conversation
        self._emit = emit
        self._spawn = spawn
        self._servers: dict[str, dict[str, Any]] = {}  # label -> {"tool", "key", "tools"}
        self._listing: dict[str, asyncio.Task[None]] = {}
        self._answered: set[str] = set()  # approval requests already acted on

    def configure(self, tools: list[dict[str, Any]]) -> None:
        """The session's tools changed: list the servers that are new or changed."""
        wanted = {t["server_label"]: t for t in tools if t.get("type") == "mcp"}
        for label in set(self._servers) - set(wanted):
            del self._servers[label]
        for label, tool in wanted.items():
            key = json.dumps(tool, sort_keys=True)
            if self._servers.get(label, {}).get("key") != key:
                self._servers[label] = {"tool": tool, "key": key, "tools": []}
                self._listing[label] = self._spawn(self._list(label, tool))

    async def ready(self) -> None:
        """Until the listings in progress have ended (a response needs the tools)."""
        pending = [t for t in self._listing.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def _list(self, label: str, tool: dict[str, Any]) -> None:
        item: dict[str, Any] = {"id": new_id("mcpl"), "type": "mcp_list_tools",
                                "server_label": label, "tools": []}
        previous = self._conversation.add(item)
        self._emit({"type": "conversation.item.added", "previous_item_id": previous,
                    "item": copy.deepcopy(item)})
        self._emit({"type": "mcp_list_tools.in_progress", "item_id": item["id"]})
        try:
            item["tools"] = await list_tools(tool)
        except McpError as exc:
            event(logger, "mcp_list_failed", logging.WARNING, server_label=label,
                  error=exc.error["message"])
            self._emit({"type": "mcp_list_tools.failed", "item_id": item["id"]})
        else:
            if label in self._servers:
                self._servers[label]["tools"] = item["tools"]
            self._emit({"type": "mcp_list_tools.completed", "item_id": item["id"]})
        self._emit({"type": "conversation.item.done", "item": copy.deepcopy(item)})

    def for_model(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The MCP tools by name (for the response) and as function tools (for the model)."""
        by_name: dict[str, dict[str, Any]] = {}
        functions: list[dict[str, Any]] = []
        for server in self._servers.values():
            for listed in server["tools"]:
                by_name[listed["name"]] = {"tool": server["tool"],
                                           "hints": listed.get("annotations")}
                functions.append({"type": "function", "name": listed["name"],
                                  "description": listed.get("description") or "",
                                  "parameters": listed.get("input_schema") or {}})
        return by_name, functions

    def approved_calls(self) -> list[dict[str, Any]]:
        """``mcp_call`` items for the approval requests the application approved since the
        last response (declined ones are only shown to the model)."""
        items = self._conversation.items()
        requests = {i["id"]: i for i in items if i.get("type") == "mcp_approval_request"}
        calls = []
        for item in items:
            request = requests.get(item.get("approval_request_id", "")) \
                if item.get("type") == "mcp_approval_response" else None
            if request is None or request["id"] in self._answered:
                continue
            self._answered.add(request["id"])
            if item.get("approve") and request["server_label"] in self._servers:
                calls.append({"id": new_id("mcp"), "type": "mcp_call",
                              "server_label": request["server_label"],
                              "name": request["name"], "arguments": request["arguments"],
                              "approval_request_id": request["id"]})
        return calls

    async def run_calls(self, run: ResponseRun) -> None:
        """Run the response's pending ``mcp_call`` items on their servers, one by one."""
        while run.mcp_pending and not run.finished:
            item = run.mcp_pending.pop(0)
            server = self._servers.get(item["server_label"])
            run.mcp_started(item)
            try:
                if server is None:
                    raise McpError({"type": "protocol_error", "code": -32601,
                                    "message": f"no MCP server {item['server_label']!r}"})
                item["output"] = await call_tool(server["tool"], item["name"],
                                                 item["arguments"])
            except McpError as exc:
                item["error"] = exc.error
            run.mcp_finished(item)
