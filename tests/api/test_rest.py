"""The call-control REST API, driven by the official ``openai`` SDK over real HTTP.

``create_app`` runs under uvicorn on 127.0.0.1 with a recording CallControl double; clients
change nothing but ``base_url``, exactly as an application moving off OpenAI would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from pydantic import BaseModel

from callgate.api.app import create_app
from callgate.calls.control import CallNotFound, CallStateConflict
from callgate.config import ModelRoute, Settings

API_KEY = "sk-callgate-test"


class FakeControl:
    """Records every verb; some call ids fail the way the call layer fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.attempts: Counter[str] = Counter()

    def _check(self, call_id: str) -> None:
        self.attempts[call_id] += 1
        if call_id.startswith("rtc_missing"):
            raise CallNotFound(f"No call with id '{call_id}'.")
        if call_id.startswith("rtc_ended"):
            raise CallStateConflict("The call has already ended.")
        if call_id.startswith("rtc_boom"):
            raise RuntimeError("registry exploded at /srv/secret/path.py")

    async def accept(self, call_id: str, session: dict[str, Any]) -> None:
        self._check(call_id)
        self.calls.append(("accept", call_id, session))

    async def reject(self, call_id: str, status_code: int) -> None:
        self._check(call_id)
        self.calls.append(("reject", call_id, status_code))

    async def refer(self, call_id: str, target_uri: str) -> None:
        self._check(call_id)
        self.calls.append(("refer", call_id, target_uri))

    async def hangup(self, call_id: str) -> None:
        self._check(call_id)
        self.calls.append(("hangup", call_id, None))

    async def dial(self, session: dict[str, Any], transport: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("dial", transport["destination"], (session, transport)))
        return {"id": "rtc_out1", "object": "realtime.call", "status": "dialing",
                "direction": "outbound", "destination": transport["destination"],
                "trunk": transport.get("trunk") if isinstance(transport.get("trunk"), str)
                else None, "created_at": 1}


CONTROL = FakeControl()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = Settings(api_key=API_KEY, api_docs=True,
                        models={"support-bot": ModelRoute(engine="openai-compatible")})
    app = create_app(settings, CONTROL)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def control() -> FakeControl:
    CONTROL.calls.clear()
    CONTROL.attempts.clear()
    return CONTROL


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=base_url + "/v1", max_retries=0)


FULL_SESSION: dict[str, Any] = {
    "model": "gpt-realtime",
    "instructions": "You are a support agent.",
    "audio": {
        "input": {"format": {"type": "audio/pcmu"},
                  "noise_reduction": {"type": "near_field"},
                  "transcription": {"model": "whisper-1", "language": "en"},
                  "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                     "prefix_padding_ms": 300, "silence_duration_ms": 500,
                                     "create_response": True, "interrupt_response": True}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                   "speed": 1.25},
    },
    "output_modalities": ["audio"],
    "tools": [{"type": "function", "name": "transfer", "description": "Transfer the call",
               "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": {"workflow_name": "phone"},
    "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    "include": ["item.input_audio_transcription.logprobs"],
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low"},
}


# --- the SDK's happy paths --------------------------------------------------------------------


def test_sdk_call_control(client: openai.OpenAI, control: FakeControl) -> None:
    client.realtime.calls.accept("rtc_1", type="realtime", model="gpt-realtime",
                                 instructions="Be brief.")
    client.realtime.calls.reject("rtc_2", status_code=486)
    client.realtime.calls.reject("rtc_3")
    client.realtime.calls.refer("rtc_1", target_uri="tel:+14155550123")
    client.realtime.calls.hangup("rtc_1")
    assert control.calls == [
        ("accept", "rtc_1", {"type": "realtime", "model": "gpt-realtime",
                             "instructions": "Be brief."}),
        ("reject", "rtc_2", 486),
        ("reject", "rtc_3", 603),  # SPEC default: 603 Decline
        ("refer", "rtc_1", "tel:+14155550123"),
        ("hangup", "rtc_1", None),
    ]


def test_sdk_accept_full_session(client: openai.OpenAI, control: FakeControl) -> None:
    client.realtime.calls.accept("rtc_full", type="realtime", **FULL_SESSION)
    assert control.calls == [("accept", "rtc_full", {"type": "realtime", **FULL_SESSION})]


def test_accept_keeps_explicit_nulls(client: openai.OpenAI, control: FakeControl) -> None:
    # null turns a feature off, which is not the same as leaving it out.
    client.realtime.calls.accept("rtc_1", type="realtime", tracing=None,
                                 audio={"input": {"turn_detection": None}})
    assert control.calls[0][2] == {"type": "realtime", "tracing": None,
                                   "audio": {"input": {"turn_detection": None}}}


@pytest.mark.parametrize("model", ["echo", "local", "support-bot", "gpt-realtime-2025-08-28",
                                   "gpt-4o-mini-realtime-preview", "gpt-realtime-mini",
                                   "gpt-audio-1.5"])
def test_known_models_and_aliases(client: openai.OpenAI, control: FakeControl,
                                  model: str) -> None:
    client.realtime.calls.accept("rtc_1", type="realtime", model=model)
    assert control.calls[0][2]["model"] == model


def test_async_sdk(base_url: str, control: FakeControl) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url + "/v1",
                                      max_retries=0) as aclient:
            await aclient.realtime.calls.accept("rtc_a", type="realtime",
                                                model="gpt-realtime-mini")
            await aclient.realtime.calls.reject("rtc_b", status_code=486)
            await aclient.realtime.calls.refer("rtc_a", target_uri="sip:agent@pbx.example.com")
            await aclient.realtime.calls.hangup("rtc_a")
            with pytest.raises(openai.NotFoundError):
                await aclient.realtime.calls.hangup("rtc_missing")

    asyncio.run(main())
    assert [c[0] for c in control.calls] == ["accept", "reject", "refer", "hangup"]


def test_guide_raw_post(base_url: str, control: FakeControl) -> None:
    # The SIP guide's own handler: requests.post(..., headers=..., json=call_accept).
    call_accept = {"type": "realtime", "instructions": "You are a support agent.",
                   "model": "gpt-4o-realtime-preview-2024-12-17"}
    response = httpx.post(f"{base_url}/v1/realtime/calls/rtc_guide/accept",
                          headers={"Authorization": "Bearer " + API_KEY,
                                   "Content-Type": "application/json"}, json=call_accept)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    assert control.calls == [("accept", "rtc_guide", call_accept)]

    refer = httpx.post(f"{base_url}/v1/realtime/calls/rtc_guide/refer",
                       headers={"Authorization": "Bearer " + API_KEY},
                       json={"target_uri": "tel:+14152909007"})
    assert refer.status_code == 200 and refer.json() == {}


def test_generic_post_parses_the_answer(client: openai.OpenAI, control: FakeControl) -> None:
    # Clients that read the answer with cast_to=dict need a JSON body.
    assert client.post("/realtime/calls/rtc_1/hangup", cast_to=dict) == {}


def test_outbound_call_with_the_sdk_never_echoes_credentials(client: openai.OpenAI,
                                                             control: FakeControl) -> None:
    body = {"session": {"type": "realtime", "model": "echo"},
            "transport": {"type": "sip", "destination": "+14155550123",
                          "trunk": {"provider_url": "sip:192.0.2.9;transport=tcp",
                                    "auth": {"type": "digest", "username": "u",
                                             "password": "hunter2"},
                                    "caller_number": "+15550001111"},
                          "headers": {"X-Campaign": "7"}, "ring_timeout": 20}}
    created = client.post("/realtime/calls", body=body, cast_to=dict)
    assert created["id"] == "rtc_out1" and created["status"] == "dialing"
    assert created["object"] == "realtime.call" and "hunter2" not in str(created)
    session, transport = control.calls[-1][2]
    assert session == {"type": "realtime", "model": "echo"}
    assert transport["trunk"]["auth"]["password"] == "hunter2"
    assert transport["ring_timeout"] == 20


def test_outbound_call_body_errors_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/realtime/calls", cast_to=dict, body={
            "transport": {"type": "sip", "destination": "+1", "ring_timeout": 0}})
    assert _error(info.value)["param"] == "transport.ring_timeout"
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/realtime/calls", cast_to=dict, body={"transport": {"type": "webrtc"}})
    assert (_error(info.value)["param"] or "").startswith("transport")


# --- errors, as the SDK raises them -----------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    assert set(exc.body) == {"message", "type", "param", "code"}
    return exc.body


def test_unknown_call(client: openai.OpenAI) -> None:
    calls = client.realtime.calls
    verbs: list[Callable[[], object]] = [
        lambda: calls.accept("rtc_missing", type="realtime"),
        lambda: calls.reject("rtc_missing"),
        lambda: calls.refer("rtc_missing", target_uri="tel:+1415"),
        lambda: calls.hangup("rtc_missing")]
    for verb in verbs:
        with pytest.raises(openai.NotFoundError) as info:
            verb()
        body = _error(info.value)
        assert body["code"] == "call_not_found" and "rtc_missing" in body["message"]
        assert body["type"] == "invalid_request_error"


def test_conflict_is_not_retried(base_url: str, control: FakeControl) -> None:
    retrying = openai.OpenAI(api_key=API_KEY, base_url=base_url + "/v1", max_retries=2)
    with pytest.raises(openai.ConflictError) as info:
        retrying.realtime.calls.accept("rtc_ended", type="realtime")
    assert _error(info.value)["code"] == "call_state_conflict"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert control.attempts["rtc_ended"] == 1


def test_unknown_model(client: openai.OpenAI, control: FakeControl) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.realtime.calls.accept("rtc_1", type="realtime", model="llama-9000")
    body = _error(info.value)
    assert body["param"] == "model" and body["type"] == "invalid_request_error"
    for name in ("echo", "local", "support-bot", "llama-9000", "alias", "gpt-realtime"):
        assert name in body["message"]
    assert control.calls == []


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"type": "transcription"}, "type", "invalid_value"),
    ({"type": "realtime", "audio": {"output": {"speed": 3.0}}}, "audio.output.speed",
     "decimal_above_max_value"),
    ({"type": "realtime", "audio": {"output": {"voice": 7}}}, "audio.output.voice",
     "invalid_type"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "audio.input.format.rate", "invalid_value"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
     "audio.input.format.type", "invalid_value"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                 "threshold": 1.5}}}},
     "audio.input.turn_detection.threshold", "decimal_above_max_value"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                 "eagerness": "eager"}}}},
     "audio.input.turn_detection.eagerness", "invalid_value"),
    ({"type": "realtime", "output_modalities": ["audio", "text"]}, "output_modalities",
     "invalid_value"),
    ({"type": "realtime", "max_output_tokens": 5000}, "max_output_tokens",
     "integer_above_max_value"),
    ({"type": "realtime", "max_output_tokens": 0}, "max_output_tokens",
     "integer_below_min_value"),
    ({"type": "realtime", "tools": [{"type": "function", "name": "a"}, {"type": "function"}]},
     "tools[1].name", "missing_required_parameter"),
    ({"type": "realtime", "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"type": "realtime", "truncation": {"type": "retention_ratio", "retention_ratio": 2}},
     "truncation.retention_ratio", "integer_above_max_value"),
    ({"type": "realtime", "instructions": 42}, "instructions", "invalid_type"),
    ({"type": "realtime", "extra_body": {"voice": "alloy"}}, "voice", "unknown_parameter"),
    ({"extra_body": {"instructions": "hi"}}, "type", "missing_required_parameter"),
])
def test_invalid_accept_bodies(client: openai.OpenAI, control: FakeControl,
                               kwargs: dict[str, Any], param: str, code: str) -> None:
    kwargs = dict(kwargs)
    extra = kwargs.pop("extra_body", None)
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/realtime/calls/rtc_1/accept", cast_to=dict,
                    body={**kwargs, **(extra or {})})
    body = _error(info.value)
    assert (body["param"], body["code"]) == (param, code), body
    assert param in body["message"]
    assert control.calls == []


@pytest.mark.parametrize("status_code", [200, 399, 700, 486.5, "486", True, None])
def test_bad_reject_status(client: openai.OpenAI, control: FakeControl,
                           status_code: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.realtime.calls.reject("rtc_1", status_code=status_code)
    assert _error(info.value)["param"] == "status_code"
    assert control.calls == []


@pytest.mark.parametrize("uri", ["", "+14155550123", "http://example.com/", "sip:",
                                 "sip:bob@exa mple.com", "tel:+1 415", "sip:a@b>;x",
                                 "sip:bob@example.com\r\nX-Evil: 1", "tel:", "mailto:a@b",
                                 "sip:bob@example.com?Route=%3Csip:evil.example%3E&Call-ID=x",
                                 "sip:bob@example.com?Replaces=abc&%52oute=x",
                                 "sips:bob@example.com?call-id=1"])
def test_bad_refer_target(client: openai.OpenAI, control: FakeControl, uri: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.realtime.calls.refer("rtc_1", target_uri=uri)
    body = _error(info.value)
    assert body["param"] == "target_uri" and body["code"] == "invalid_value"
    assert control.calls == []


@pytest.mark.parametrize("uri", ["tel:+14155550123", "tel:+1-415-555-0123;ext=12",
                                 "tel:7042;phone-context=example.com",
                                 "sip:+14155550123@trunk.example.com;user=phone",
                                 "sips:agent@pbx.example.com:5061;transport=tls",
                                 "sip:[2001:db8::1]", "sip:queue@10.0.0.5?Replaces=abc%40host",
                                 "sip:q@10.0.0.5?replaces=a%40h&User-to-User=56a390f3%3Bencoding%3Dhex"])
def test_good_refer_targets(client: openai.OpenAI, control: FakeControl, uri: str) -> None:
    client.realtime.calls.refer("rtc_1", target_uri=uri)
    assert control.calls == [("refer", "rtc_1", uri)]


def test_refer_needs_a_target(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/realtime/calls/rtc_1/refer", cast_to=dict, body={})
    assert _error(info.value)["code"] == "missing_required_parameter"


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "not valid JSON"), (b"", "required"), (b"[1, 2]", "JSON object"),
    (b'"realtime"', "JSON object"), (b"null", "JSON object")])
def test_malformed_bodies(base_url: str, content: bytes, message: str) -> None:
    response = httpx.post(f"{base_url}/v1/realtime/calls/rtc_1/accept", content=content,
                          headers={"Authorization": f"Bearer {API_KEY}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_body_size_is_bounded(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/realtime/calls/rtc_1/accept",
                          json={"type": "realtime", "instructions": "x" * (2 << 20)},
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_authentication(base_url: str, control: FakeControl) -> None:
    wrong = openai.OpenAI(api_key="sk-wrong", base_url=base_url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.realtime.calls.hangup("rtc_1")
    body = _error(info.value)
    assert (body["type"], body["param"], body["code"]) == (
        "invalid_request_error", None, "invalid_api_key")
    assert API_KEY not in body["message"] and "sk-wrong" not in body["message"]
    url = f"{base_url}/v1/realtime/calls/rtc_1/accept"
    for headers in ({}, {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": "Bearer"}):
        response = httpx.post(url, json={"type": "realtime"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    # Authentication is decided before the body is even looked at.
    response = httpx.post(url, content=b"{broken", headers={"content-type": "application/json"})
    assert response.status_code == 401
    # The scheme name is case-insensitive (RFC 7235 §2.1).
    response = httpx.post(url, json={"type": "realtime"},
                          headers={"Authorization": f"bearer {API_KEY}"})
    assert response.status_code == 200
    assert [c[0] for c in control.calls] == ["accept"]


def test_unexpected_errors_are_500_without_details(base_url: str) -> None:
    client = openai.OpenAI(api_key=API_KEY, base_url=base_url + "/v1", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.realtime.calls.hangup("rtc_boom")
    body = _error(info.value)
    assert body["type"] == "server_error"
    text = info.value.response.text
    assert "registry" not in text and "secret" not in text and "Traceback" not in text


def test_unknown_routes_and_methods(base_url: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{base_url}/v1/realtime/calls/rtc_1/transfer", headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "Invalid URL (POST /v1/realtime/calls/rtc_1/transfer).")
    response = httpx.post(f"{base_url}/v1/realtime/calls/rtc_1/hangup/", headers=headers)
    assert response.status_code == 404
    response = httpx.get(f"{base_url}/v1/realtime/calls/rtc_1/hangup", headers=headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_health_and_openapi(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/openapi.json").status_code == 401  # the map is behind the key
    schema = httpx.get(f"{base_url}/openapi.json",
                       headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert set(schema["paths"]) == {
        "/v1/realtime/calls/{call_id}/accept", "/v1/realtime/calls/{call_id}/reject",
        "/v1/realtime/calls/{call_id}/refer", "/v1/realtime/calls/{call_id}/hangup",
        "/healthz", "/v1/realtime/calls", "/v1/trunks"}
    accept = schema["paths"]["/v1/realtime/calls/{call_id}/accept"]["post"]
    assert set(accept["responses"]) == {"200", "400", "401", "404", "409", "413", "500"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    model = schema["components"]["schemas"]["AcceptRequest"]["properties"]["model"]
    assert {"type": "string", "enum": ["echo", "local", "support-bot"]} in model["anyOf"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_without_api_key_no_auth_is_needed() -> None:
    control = FakeControl()
    app = create_app(Settings(api_key=None), control)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callgate") as http:
            return await http.post("/v1/realtime/calls/rtc_1/hangup")

    response = asyncio.run(main())
    assert response.status_code == 200 and response.json() == {}
    assert control.calls == [("hangup", "rtc_1", None)]
    assert "securitySchemes" not in app.openapi().get("components", {})


def test_extra_routers_are_mounted() -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/v1/realtime/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app = create_app(Settings(api_key=API_KEY), FakeControl(), extra_routers=[router])

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://callgate") as http:
            return await http.get("/v1/realtime/ping")

    assert asyncio.run(main()).json() == {"pong": "yes"}


def test_accept_schema_knows_every_sdk_field() -> None:
    # The accept body mirrors the SDK's session types field for field; a newer SDK that adds
    # a field fails here rather than as a 400 "Unknown parameter" in production.
    from openai.types.realtime import (
        audio_transcription,
        realtime_audio_config_input,
        realtime_audio_config_output,
        realtime_audio_formats,
        realtime_audio_input_turn_detection,
        realtime_function_tool,
        realtime_reasoning,
        realtime_session_create_request,
        realtime_tracing_config,
        realtime_truncation_retention_ratio,
    )
    from openai.types.responses import response_prompt, tool_choice_function, tool_choice_mcp

    from callgate.api import schemas

    pairs: list[tuple[type[BaseModel], type[BaseModel]]] = [
        (realtime_session_create_request.RealtimeSessionCreateRequest, schemas.AcceptRequest),
        (realtime_audio_config_input.RealtimeAudioConfigInput, schemas.AudioInput),
        (realtime_audio_config_input.NoiseReduction, schemas.NoiseReduction),
        (realtime_audio_config_output.RealtimeAudioConfigOutput, schemas.AudioOutput),
        (realtime_audio_config_output.VoiceID, schemas.VoiceId),
        (realtime_audio_formats.AudioPCM, schemas.AudioPcm),
        (realtime_audio_formats.AudioPCMU, schemas.AudioPcmu),
        (realtime_audio_formats.AudioPCMA, schemas.AudioPcma),
        (realtime_audio_input_turn_detection.ServerVad, schemas.ServerVad),
        (realtime_audio_input_turn_detection.SemanticVad, schemas.SemanticVad),
        (audio_transcription.AudioTranscription, schemas.Transcription),
        (realtime_function_tool.RealtimeFunctionTool, schemas.FunctionTool),
        (tool_choice_function.ToolChoiceFunction, schemas.ToolChoiceFunction),
        (tool_choice_mcp.ToolChoiceMcp, schemas.ToolChoiceMcp),
        (realtime_tracing_config.TracingConfiguration, schemas.Tracing),
        (realtime_truncation_retention_ratio.RealtimeTruncationRetentionRatio,
         schemas.RetentionRatio),
        (realtime_truncation_retention_ratio.TokenLimits, schemas.TokenLimits),
        (response_prompt.ResponsePrompt, schemas.Prompt),
        (realtime_reasoning.RealtimeReasoning, schemas.Reasoning),
    ]
    for theirs, ours in pairs:
        missing = set(theirs.model_fields) - set(ours.model_fields)
        assert not missing, f"{ours.__name__} lacks {sorted(missing)}"
