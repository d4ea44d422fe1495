"""The language model of a cascade: OpenAI-compatible chat completions, streamed.

Two backends speak the same chunk format (``chat.completion.chunk``), so one accumulator
serves both:

* :class:`ChatCompletionsClient` - any OpenAI-compatible server (vLLM, Ollama, llama.cpp's
  server, OpenAI) over httpx, Server-Sent Events;
* :class:`callgate.engines.llama.LlamaCppChat` - llama.cpp in process.

The Realtime conversation (GA items) becomes chat messages: the session ``instructions`` are
the system message, ``function_call`` items become assistant ``tool_calls`` and
``function_call_output`` items ``tool`` messages; Realtime function tools
(``{type, name, description, parameters}``) become chat tools (``{type, function: {...}}``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from callgate.engines.base import ResponseRequest, TextDelta, ToolCall, ToolCallDelta


class LlmError(Exception):
    """The language model failed; ``code`` goes into the session's ``error`` event."""

    code = "llm_error"


class LlmUnavailable(LlmError):
    """No language model can be reached or loaded."""

    code = "llm_unavailable"


@dataclass(frozen=True, slots=True)
class LlmDone:
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)


LlmEvent = TextDelta | ToolCallDelta | ToolCall | LlmDone


class ChatModel(Protocol):
    def stream(self, request: ResponseRequest) -> AsyncIterator[LlmEvent]: ...

    async def aclose(self) -> None: ...


# --- Realtime conversation -> chat completions request ------------------------------------

_TEXT_PARTS = {"input_text": "text", "output_text": "text", "text": "text",
               "input_audio": "transcript", "output_audio": "transcript", "audio": "transcript"}


def _item_text(item: dict[str, Any]) -> str:
    parts = [str(part.get(_TEXT_PARTS[part.get("type", "")]) or "")
             for part in item.get("content") or () if part.get("type") in _TEXT_PARTS]
    return " ".join(p.strip() for p in parts if p.strip())


def chat_messages(request: ResponseRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for item in request.conversation:
        kind = item.get("type")
        if kind == "message":
            role, text = item.get("role"), _item_text(item)
            if role in ("system", "user", "assistant") and text:
                messages.append({"role": role, "content": text})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or _call_id(), "type": "function",
                    "function": {"name": item.get("name", ""),
                                 "arguments": item.get("arguments") or "{}"}}
            # Calls made in one turn belong to one assistant message (parallel tool calls).
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id", ""),
                             "content": str(item.get("output", ""))})
    return messages


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "function",
             "function": {key: tool[key] for key in ("name", "description", "parameters")
                          if key in tool}}
            for tool in tools if tool.get("type", "function") == "function" and "name" in tool]


def chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def chat_payload(request: ResponseRequest, model: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": chat_messages(request)}
    tools = chat_tools(request.tools)
    if tools:
        payload["tools"] = tools
        payload["tool_choice"] = chat_tool_choice(request.tool_choice)
    if request.max_output_tokens is not None:
        payload["max_tokens"] = request.max_output_tokens
    return payload


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


# --- chat.completion.chunk stream -> events ------------------------------------------------

class ChunkAccumulator:
    """Text and tool-call arguments as they come; each whole tool call once it is complete.

    A call's argument pieces wait until its name is known (servers send it first, but a
    stream may split it off).
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}
        self._finish: str | None = None
        self._usage: dict[str, int] = {}
        self.seen_chunk = False

    def feed(self, chunk: dict[str, Any]) -> list[TextDelta | ToolCallDelta]:
        self.seen_chunk = True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = {"input_tokens": int(usage.get("prompt_tokens") or 0),
                           "output_tokens": int(usage.get("completion_tokens") or 0),
                           "total_tokens": int(usage.get("total_tokens") or 0)}
        out: list[TextDelta | ToolCallDelta] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(TextDelta(str(delta["content"])))
            for call in delta.get("tool_calls") or ():
                slot = self._calls.setdefault(int(call.get("index", len(self._calls))),
                                              {"id": "", "name": "", "arguments": "", "sent": ""})
                function = call.get("function") or {}
                slot["id"] = slot["id"] or str(call.get("id") or "")
                slot["name"] = slot["name"] or str(function.get("name") or "")
                slot["arguments"] += str(function.get("arguments") or "")
                unsent = slot["arguments"][len(slot["sent"]):]
                if slot["name"] and unsent:
                    slot["id"] = slot["id"] or _call_id()
                    slot["sent"] = slot["arguments"]
                    out.append(ToolCallDelta(slot["id"], slot["name"], unsent))
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    @property
    def finished(self) -> bool:
        return self._finish is not None

    def finish(self) -> list[ToolCall | LlmDone]:
        out: list[ToolCall | LlmDone] = [
            ToolCall(call_id=slot["id"] or _call_id(), name=slot["name"],
                     arguments=slot["arguments"] or "{}")
            for _, slot in sorted(self._calls.items()) if slot["name"]]
        out.append(LlmDone(self._finish, self._usage))
        return out


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each Server-Sent Event (WHATWG HTML, "event stream interpretation")."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # other fields (event:, id:, retry:) and comments (":") carry nothing for us
    if data:
        yield "\n".join(data)


class ChatCompletionsClient:
    """Streaming ``POST {base_url}/chat/completions`` (``base_url`` ends in ``/v1``)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 *, timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _model_name(self) -> str:
        """The configured model, else the first one the server lists (llama.cpp, Ollama)."""
        if self.model:
            return self.model
        async with self._errors():
            response = await self._http.get("/models")
            await self._check(response)
        try:
            self.model = str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmError(f"{self.base_url}/models lists no model; set the LLM model name"
                           ) from exc
        return self.model

    async def stream(self, request: ResponseRequest) -> AsyncIterator[LlmEvent]:
        payload = chat_payload(request, await self._model_name())
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        acc = ChunkAccumulator()
        async with self._errors(), self._http.stream("POST", "/chat/completions",
                                                     json=payload) as response:
            await self._check(response)
            async for data in sse_data(response.aiter_lines()):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise LlmError(f"bad stream from {self.base_url}: not JSON: "
                                   f"{data[:80]!r}") from exc
                if not isinstance(chunk, dict):
                    raise LlmError(f"bad stream from {self.base_url}: {data[:80]!r}")
                if chunk.get("error"):
                    raise LlmError(f"language model error: {_error_text(chunk)}")
                for delta in acc.feed(chunk):
                    yield delta
            else:
                if not acc.finished:
                    raise LlmError(f"stream from {self.base_url} ended before the answer did")
        for event in acc.finish():
            yield event

    def _errors(self) -> _HttpErrors:
        return _HttpErrors(self.base_url)

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            body = (await response.aread()).decode("utf-8", "replace")
            try:
                detail = _error_text(json.loads(body))
            except ValueError:
                detail = body[:200]
            raise LlmError(f"language model server {self.base_url} answered "
                           f"{response.status_code}: {detail}")


def _error_text(doc: Any) -> str:
    if isinstance(doc, dict):
        error = doc.get("error", doc)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(doc)[:200]


class _HttpErrors:
    """Maps httpx failures to LlmError/LlmUnavailable with the server named."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            raise LlmUnavailable(f"cannot reach the language model at {self.base_url}: "
                                 f"{exc or type(exc).__name__}") from exc
        if isinstance(exc, httpx.TimeoutException):
            raise LlmError(f"the language model at {self.base_url} timed out") from exc
        if isinstance(exc, httpx.HTTPError):
            raise LlmError(f"connection to the language model at {self.base_url} failed: "
                           f"{exc or type(exc).__name__}") from exc


class UnavailableChat:
    """Stands in when no language model is configured: every response says so."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ResponseRequest) -> AsyncIterator[LlmEvent]:
        raise LlmUnavailable(self.reason)
        yield  # an async generator, like the other backends
