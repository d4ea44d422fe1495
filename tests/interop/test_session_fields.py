"""Every GA session setting takes effect or is refused with an error naming it, driven
through the official openai SDK against a cascade engine (openai-compatible, its stages on
the test peer). docs/session-fields.md lists these rows."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.engines.peer import Reply
from tests.realtime.doubles import tone

from .harness import API_KEY, INSTRUCTIONS, Gateway, gateway, system_prompts

pytestmark = pytest.mark.anyio

CONNECTOR = {"type": "mcp", "server_label": "mail", "connector_id": "connector_gmail"}
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"prompt": {"id": "pmpt_123"}}, "session.prompt"),
    ({"include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
    ({"reasoning": {"effort": "low"}}, "session.reasoning"),
    ({"parallel_tool_calls": False}, "session.parallel_tool_calls"),
    ({"tools": [CONNECTOR]}, "session.tools[0].server_url"),
    ({"tool_choice": {"type": "mcp", "server_label": "clinic"}}, "session.tool_choice.type"),
    ({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
     "session.audio.input.noise_reduction"),
    ({"audio": {"input": {"transcription": {"model": "my-asr"}}}},
     "session.audio.input.transcription.model"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1", "language": "French"}}}},
     "session.audio.input.transcription.language"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1", "keywords": ["Elm"]}}}},
     "session.audio.input.transcription.keywords"),
    ({"audio": {"output": {"voice": {"id": "voice_123"}}}}, "session.audio.output.voice"),
    ({"model": "no-such-model"}, "session.model"),
]


async def events_until(connection: Any, kind: str, timeout: float = 5.0
                       ) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        raw = await asyncio.wait_for(connection.recv_bytes(), timeout)
        seen.append(json.loads(raw))
        if seen[-1]["type"] == kind:
            return seen


def client(gw: Gateway) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=API_KEY, base_url=gw.base_url,
                       websocket_base_url=gw.base_url.replace("http://", "ws://", 1),
                       max_retries=0)


@pytest.mark.parametrize(("update", "param"), REFUSED, ids=[p for _, p in REFUSED])
async def test_a_setting_the_engine_cannot_carry_out_is_refused(update: dict[str, Any],
                                                                param: str) -> None:
    async with gateway([]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            created = await events_until(conn, "session.created")
            before = created[-1]["session"]
            await conn.session.update(session={"type": "realtime", **update})
            error = (await events_until(conn, "error"))[-1]["error"]
            assert error["param"] == param, error
            assert error["code"] in ("unsupported_for_model", "model_change_unsupported")
            assert param.removeprefix("session.").split(".")[0].split("[")[0] in \
                error["message"] or "model" in error["message"]
            # nothing of the refused update took effect
            await conn.session.update(session={"type": "realtime", "instructions": "x"})
            after = (await events_until(conn, "session.updated"))[-1]["session"]
            assert {k: v for k, v in after.items() if k != "instructions"} == \
                {k: v for k, v in before.items() if k != "instructions"}
        await sdk.close()


async def test_settings_the_engine_carries_out() -> None:
    async with gateway([]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={
                "type": "realtime", "model": "gpt-realtime-mini", "instructions": INSTRUCTIONS,
                "tracing": "auto", "max_output_tokens": 50, "output_modalities": ["text"],
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"},
                                    "noise_reduction": None}}})
            events = await events_until(conn, "session.updated")
            assert not [e for e in events if e["type"] == "error"], events
            session = events[-1]["session"]
            # a realtime name of the same engine is taken; tracing is shown (and ignored)
            assert session["model"] == "gpt-realtime-mini" and session["tracing"] == "auto"
            await conn.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hello?"}]})
            await conn.response.create()
            done = (await events_until(conn, "response.done"))[-1]["response"]
            assert done["status"] == "completed", done
            assert done["output"][0]["content"][0]["type"] == "output_text"
        await sdk.close()
        (request,) = gw.chat_requests()
        assert INSTRUCTIONS in system_prompts(request) and request["max_tokens"] == 50


async def test_function_call_arguments_stream_as_the_model_writes_them() -> None:
    arguments = '{"day": "Monday", "detail": "morning"}'
    async with gateway([Reply(["Let me look."], tool_calls=[
            {"id": "call_1", "name": "opening_hours", "arguments": arguments}])]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "tools": [{
                "type": "function", "name": "opening_hours",
                "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}}],
                "output_modalities": ["text"]})
            await conn.response.create(response={"input": [{
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Monday?"}]}]})
            events = await events_until(conn, "response.done")
        await sdk.close()
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    # the peer sends the arguments in two chunks: each is passed on as it comes
    assert [d["delta"] for d in deltas] == [arguments[:len(arguments) // 2],
                                            arguments[len(arguments) // 2:]]
    kinds = [e["type"] for e in events]
    first_delta = kinds.index("response.function_call_arguments.delta")
    assert kinds.index("response.output_text.done") < first_delta  # the text item closed
    assert kinds.index("response.function_call_arguments.done") > first_delta
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == arguments and done["call_id"] == "call_1"
    call = [o for o in events[-1]["response"]["output"] if o["type"] == "function_call"]
    assert call[0]["arguments"] == arguments and call[0]["status"] == "completed"


async def test_truncation_keeps_the_conversation_within_the_limit() -> None:
    async with gateway([]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={
                "type": "realtime", "output_modalities": ["text"],
                "truncation": {"type": "retention_ratio", "retention_ratio": 0.5,
                               "token_limits": {"post_instructions": 200}}})
            await events_until(conn, "session.updated")
            for turn in range(8):  # about 54 tokens each
                await conn.conversation.item.create(item={
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": f"turn{turn} " + "w " * 98}]})
                await events_until(conn, "conversation.item.done")
            await conn.response.create()
            await events_until(conn, "response.done")
        await sdk.close()
    (request,) = gw.chat_requests()
    sent = [m["content"].split()[0] for m in request["messages"] if m["role"] == "user"]
    assert sent == ["turn7"]  # over 200: cut to half of it, the newest that fit


async def test_transcription_language_and_prompt_reach_the_recogniser() -> None:
    async with gateway([]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {
                "turn_detection": None, "transcription": {
                    "model": "whisper-1", "language": "fr", "prompt": "Clinique Elm"}}}})
            assert not [e for e in await events_until(conn, "session.updated")
                        if e["type"] == "error"]
            await conn.input_audio_buffer.append(audio=base64.b64encode(tone(400)).decode())
            await conn.input_audio_buffer.commit()
            await events_until(conn, "conversation.item.input_audio_transcription.completed",
                               30)
        await sdk.close()
    (asked,) = gw.peer.transcriptions
    assert (asked["language"], asked["prompt"]) == ("fr", "Clinique Elm")


async def test_audio_settings_through_the_sdk() -> None:
    async with gateway([Reply(["Hello there."])]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            # a standalone socket carries PCM at 24 kHz or G.711 (a phone call's codec is SDP's)
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 16000}}}})  # type: ignore
            error = (await events_until(conn, "error"))[-1]["error"]
            assert error["param"] == "session.audio.input.format.rate"
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcmu"}}}})
            session = (await events_until(conn, "session.updated"))[-1]["session"]
            assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"turn_detection": None},
                "output": {"voice": "marin", "speed": 1.25}}})
            session = (await events_until(conn, "session.updated"))[-1]["session"]
            assert session["audio"]["input"]["turn_detection"] is None
            await conn.response.create(response={"input": [{
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}]}]})
            done = (await events_until(conn, "response.done"))[-1]["response"]
        await sdk.close()
    assert done["status"] == "completed" and done["audio"]["output"]["voice"] == "marin"
    (spoken,) = gw.peer.speech_requests
    assert (spoken["voice"], spoken["speed"]) == ("marin", 1.25)


async def test_item_and_response_events_through_the_sdk() -> None:
    async with gateway([Reply(["Hello there."]),
                        Reply(["One.", " Two.", " Three."], delay=0.5)]) as gw:
        sdk = client(gw)
        async with sdk.realtime.connect(model="gpt-realtime") as conn:
            await events_until(conn, "session.created")
            await conn.conversation.item.create(item={
                "id": "item_q", "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}]})
            await conn.conversation.item.retrieve(item_id="item_q")
            retrieved = (await events_until(conn, "conversation.item.retrieved"))[-1]
            assert retrieved["item"]["content"][0]["text"] == "Hi"
            await conn.response.create()
            reply = (await events_until(conn, "response.done"))[-1]["response"]["output"][0]
            await conn.conversation.item.truncate(item_id=reply["id"], content_index=0,
                                                  audio_end_ms=100)
            truncated = (await events_until(conn, "conversation.item.truncated"))[-1]
            assert truncated["audio_end_ms"] == 100
            await conn.conversation.item.delete(item_id="item_q")
            assert (await events_until(conn, "conversation.item.deleted"))[-1]["item_id"] == \
                "item_q"
            await conn.response.create()
            await events_until(conn, "response.created")
            await conn.response.cancel()
            done = (await events_until(conn, "response.done"))[-1]["response"]
        await sdk.close()
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
