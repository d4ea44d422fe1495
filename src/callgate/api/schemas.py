"""Request and response bodies of the call-control REST API, as strict pydantic models.

The accept body is the GA Realtime session configuration, flat at the top level, exactly as
the ``openai`` SDK's ``client.realtime.calls.accept(call_id, type="realtime", ...)`` sends it
(field list and ranges: ``shared/reference/openai-wire.md`` §2, §4, §5). Validation is strict:
no type coercion and no unknown fields, so a typo is a 400 naming the field rather than a
silently ignored setting. Free-form places in OpenAI's schema (a function tool's JSON Schema
``parameters``, tracing ``metadata``, prompt ``variables``) stay free-form, and MCP tool
definitions keep fields this list does not know, because that schema keeps growing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _integral(value: Any) -> Any:
    # JSON has one number type: 486.0 is the integer 486 (JSON Schema's "integer" agrees).
    return int(value) if isinstance(value, float) and value.is_integer() else value


NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
OutputTokens = Annotated[int, Field(ge=1, le=4096), BeforeValidator(_integral)]
SipStatus = Annotated[int, Field(ge=400, le=699), BeforeValidator(_integral)]


# --- audio ------------------------------------------------------------------------------------


class AudioPcm(_Strict):
    type: Literal["audio/pcm"]
    # The Realtime API carries 16-bit PCM at 24 kHz only (openai-wire.md §4).
    rate: Literal[24000] | None = None


class AudioPcmu(_Strict):
    type: Literal["audio/pcmu"]


class AudioPcma(_Strict):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[AudioPcm | AudioPcmu | AudioPcma, Field(discriminator="type")]


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = Field(default=None, ge=0)


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class ServerVad(_Strict):
    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0, le=1)
    prefix_padding_ms: NonNegativeInt | None = None
    silence_duration_ms: NonNegativeInt | None = None
    idle_timeout_ms: NonNegativeInt | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class SemanticVad(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInput(_Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    # null switches turn detection off (the client commits turns itself).
    turn_detection: TurnDetection | None = None


class VoiceId(_Strict):
    id: str = Field(min_length=1)


class AudioOutput(_Strict):
    format: AudioFormat | None = None
    voice: Annotated[str, Field(min_length=1)] | VoiceId | None = None
    speed: float | None = Field(default=None, ge=0.25, le=1.5)


class Audio(_Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


# --- tools ------------------------------------------------------------------------------------


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpTool(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    server_url: str | None = None


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1)


class ToolChoiceMcp(_Strict):
    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    name: str | None = None


ToolChoiceObject = Annotated[ToolChoiceFunction | ToolChoiceMcp, Field(discriminator="type")]


# --- session odds and ends --------------------------------------------------------------------


class Tracing(_Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


class TokenLimits(_Strict):
    post_instructions: NonNegativeInt | None = None


class RetentionRatio(_Strict):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0, le=1)
    token_limits: TokenLimits | None = None


class Prompt(_Strict):
    id: str = Field(min_length=1)
    version: str | None = None
    variables: dict[str, Any] | None = None


class Reasoning(_Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class AcceptRequest(_Strict):
    """Body of ``POST /v1/realtime/calls/{call_id}/accept``: the session to start."""

    type: Literal["realtime"]
    model: str | None = Field(default=None, description="A configured model name, or an "
                              "OpenAI realtime model name (an alias of the default model).")
    instructions: str | None = None
    audio: Audio | None = None
    # One modality only: audio (with its transcript) or text (openai-wire.md §2).
    output_modalities: list[Literal["audio", "text"]] | None = Field(
        default=None, min_length=1, max_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    max_output_tokens: OutputTokens | Literal["inf"] | None = None
    tracing: Literal["auto"] | Tracing | None = None
    truncation: Literal["auto", "disabled"] | RetentionRatio | None = None
    prompt: Prompt | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    recording: bool | None = Field(default=None, description="callgate extension: record "
                                   "this call's audio (stereo, caller left, agent right) "
                                   "whatever CALLGATE_RECORD_CALLS says.")


# --- reject / refer ---------------------------------------------------------------------------


class RejectRequest(_Strict):
    """Body of ``/reject``; without one the call is declined with 603."""

    status_code: SipStatus = Field(default=603, description="Final SIP status sent to the caller "
                                   "(400-699).")


# Refer-To (RFC 3515 §2.1) carries a SIP/SIPS URI (RFC 3261 §25.1) or a telephone URI
# (RFC 3966 §3). The value is placed inside <...> in a header, so white space, angle brackets
# and quotes can never be part of it.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()%"
# Each repetition below is unambiguous, so matching stays linear (no catastrophic backtracking).
_LABEL = r"[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
_PARAM = rf"[{_UNRESERVED}\[\]/:&+$]+"
# URI headers (RFC 3261 §19.1.1) a transfer target may carry into the new call's INVITE:
# Replaces for an attended transfer (RFC 3891 §5), User-to-User data (RFC 7433). Others,
# such as Route or Call-ID, would let an API client steer or forge that INVITE's routing.
REFER_URI_HEADERS = ("Replaces", "User-to-User")
# Spelled out case by case: a JSON Schema pattern has no case-insensitive flag.
_HNAME = "(?:" + "|".join("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c)
                                  for c in name) for name in REFER_URI_HEADERS) + ")"
_HVALUE = rf"[{_UNRESERVED}\[\]/?:+$]*"
_SIP_URI = (rf"sips?:(?:[{_UNRESERVED}&=+$,;?/]+(?::[{_UNRESERVED}&=+$,]*)?@)?{_HOST}"
            rf"(?::[0-9]{{1,5}})?(?:;{_PARAM}(?:={_PARAM})?)*"
            rf"(?:\?{_HNAME}={_HVALUE}(?:&{_HNAME}={_HVALUE})*)?")
_TEL_URI = (r"tel:(?:\+[\-.()]*[0-9][0-9\-.()]*|[\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*)"
            rf"(?:;[A-Za-z0-9\-]+(?:=[{_UNRESERVED}\[\]/:&+$]+)?)*")
TARGET_URI_PATTERN = rf"^(?:{_SIP_URI}|{_TEL_URI})$"
_TARGET_URI = re.compile(rf"(?:{_SIP_URI}|{_TEL_URI})")


class ReferRequest(_Strict):
    """Body of ``/refer``: where the caller is transferred (sent as SIP ``Refer-To``)."""

    target_uri: str = Field(max_length=2048, json_schema_extra={"pattern": TARGET_URI_PATTERN},
                            description="sip:, sips: or tel: URI, e.g. tel:+14155550123.")

    @field_validator("target_uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if _TARGET_URI.fullmatch(value) is not None:
            return value
        _, question, headers = value.rpartition("@")[2].partition("?")
        allowed = {name.lower() for name in REFER_URI_HEADERS}
        for field in headers.split("&") if question and value[:4].lower() != "tel:" else ():
            name = unquote(field.partition("=")[0])
            if name.lower() not in allowed:
                raise ValueError(f"the URI header {name[:40]!r} is not allowed in a transfer "
                                 f"target (only {' and '.join(REFER_URI_HEADERS)} are)")
        raise ValueError("expected a sip:, sips: or tel: URI such as tel:+14155550123")


# --- responses --------------------------------------------------------------------------------


class Empty(_Strict):
    """Success: an empty JSON object (clients may parse the body as JSON)."""


class Health(_Strict):
    status: Literal["ok"]


class ErrorDetail(_Strict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Strict):
    """OpenAI's error shape; the ``openai`` SDK raises it as ``APIStatusError.body``."""

    error: ErrorDetail


# --- outbound calls ---------------------------------------------------------------------------


class DigestAuth(_Strict):
    type: Literal["digest"]
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=256)


class InlineTrunk(_Strict):
    """A trunk given in the request, shaped like OpenAI GPT-Live's ``LiveSipTrunk``."""

    provider_url: str = Field(max_length=2048, description="sip:/sips: URI of the carrier "
                              "or PBX, e.g. sip:pbx.example.com:5060;transport=tcp.")
    auth: DigestAuth | None = None
    caller_number: str | None = Field(default=None, max_length=64)


class SipDialTransport(_Strict):
    type: Literal["sip"]
    destination: str = Field(min_length=1, max_length=2048,
                             description="E.164 (+14155550123), tel: or sip: URI.")
    trunk: str | InlineTrunk | None = Field(default=None, description="A configured trunk's "
                                            "name, or a trunk inline.")
    headers: dict[str, str] | None = Field(default=None, description="Extra SIP headers "
                                           "(X-... and the like) for the INVITE.")
    ring_timeout: float = Field(default=30.0, gt=0, le=300)
    early_media: bool = Field(default=False, description="Play the callee's early media "
                              "(183) to the session before the answer.")


class DialRequest(_Strict):
    """Body of ``POST /v1/realtime/calls`` (JSON): place a call through a trunk."""

    session: AcceptRequest | None = None
    transport: SipDialTransport


class TrunkStatus(_Strict):
    """One configured trunk and its registration (callgate's own extension; no credentials)."""

    name: str
    address: str
    registers: bool
    state: str = Field(description="unregistered | registering | registered | failed; "
                                   "not_registering for a trunk that does not REGISTER")
    expires: int = Field(description="seconds the registrar granted the binding (0: none)")
    failures: int = Field(description="REGISTER attempts failed in a row")
    public_address: str | None = Field(description="our address as the registrar sees it "
                                                   "(received/rport), when registered")


class TrunkList(_Strict):
    object: Literal["list"] = "list"
    data: list[TrunkStatus]


class CallResource(_Strict):
    id: str
    object: Literal["realtime.call"]
    status: Literal["dialing"]
    direction: Literal["outbound"]
    destination: str
    trunk: str | None
    created_at: int
