"""Settings: defaults, CALLGATE_* variables, the TOML file, and clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from callgate import config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CALLGATE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = config.load()
    assert (s.sip_port, s.sip_tls_port, s.http_port) == (5060, 5061, 8000)
    assert s.webhook_url == [] and s.default_session["model"] == "local"
    assert s.rtp_port_range == (10000, 20000)


def test_environment_lists_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_WEBHOOK_URL", "http://a/hook, http://b/hook")
    monkeypatch.setenv("CALLGATE_CODECS", "PCMA,PCMU")
    monkeypatch.setenv("CALLGATE_DEFAULT_SESSION", '{"type": "realtime", "model": "echo"}')
    monkeypatch.setenv("CALLGATE_MODELS", '{"up": {"engine": "realtime", "url": "ws://x/v1"}}')
    s = config.load()
    assert s.webhook_url == ["http://a/hook", "http://b/hook"]
    assert s.codecs == ["PCMA", "PCMU"]
    assert s.default_session == {"type": "realtime", "model": "echo"}
    assert s.model_routes["up"].engine == "realtime"


def test_toml_file_and_environment_precedence(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "callgate.toml"
    path.write_text('sip_port = 5070\nproject_id = "proj_file"\n'
                    '[models.fast]\nengine = "openai-compatible"\nllm_base_url = "http://l/v1"\n')
    monkeypatch.setenv("CALLGATE_SIP_PORT", "5080")
    s = config.load(path)
    assert s.sip_port == 5080  # the environment wins over the file
    assert s.project_id == "proj_file"
    assert s.model_routes["fast"].llm_base_url == "http://l/v1"


def test_model_resolution() -> None:
    s = config.load()
    assert s.resolve_model("echo") is not None
    resolved = s.resolve_model("gpt-4o-realtime-preview-2024-12-17")
    assert resolved is not None and resolved[1].engine == "local"  # alias of the default
    assert s.resolve_model("no-such-model") is None
    assert s.resolve_model(None) is not None


@pytest.mark.parametrize("overrides", [
    {"rtp_ports": "20000-10000"},
    {"tls_cert": "/x.pem"},
    {"default_model": "missing"},
    {"sip_port": 70000},
])
def test_bad_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        config.load(**overrides)


def test_cli_reports_bad_configuration() -> None:
    proc = subprocess.run([sys.executable, "-m", "callgate.cli", "serve"],
                          env={"CALLGATE_RTP_PORTS": "nonsense", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "bad configuration" in proc.stderr and "rtp_ports" in proc.stderr


def test_exposures_are_named_and_require_auth_refuses_them() -> None:
    open_api = config.load(webhook_url="http://hooks.example.com/in")
    names = [name for name, _ in open_api.exposures]
    assert names == ["security.api_unauthenticated", "security.webhook_unsigned",
                     "security.webhook_plain_http"]
    with pytest.raises(ValidationError) as info:
        config.load(require_auth=True, webhook_url="http://hooks.example.com/in")
    assert "require_auth" in str(info.value) and "CALLGATE_API_KEY" in str(info.value)
    # Loopback API, a signed https webhook (or plain http to this host): nothing to say.
    safe = config.load(require_auth=True, http_host="127.0.0.1",
                       webhook_url="https://hooks.example.com/in,http://127.0.0.1:9/in",
                       webhook_secret="whsec_" + "A" * 32)
    assert safe.exposures == []
    assert config.load(require_auth=True, api_key="sk-x", http_host="::").exposures == []
