"""callgate chained to callgate: the upstream-realtime engine end to end (issue 6, Must show 3).

Two ``callgate serve`` processes. B is an ordinary gateway whose ``echo`` model answers on its
``/v1/realtime`` WebSocket. A is the SIP front: its ``[models]`` table maps ``up`` to B's
WebSocket (``engine = "realtime"``), and calls are auto-accepted on ``up``. A baresip caller
speaks (espeak-ng) into a call to A; the audio travels caller → A (RTP, PCMU) → B
(``input_audio_buffer.append``, ``audio/pcmu``) → echo → A (``response.output_audio.delta``)
→ caller (RTP), the μ-law bytes undecoded all the way.
The caller's recordings of what it sent and what it heard must match, shifted by the chain's
delay. Meanwhile an application watches the call on A's sideband WebSocket with the official
``openai`` SDK: its ``session.update`` reaches B and B's ``session.updated`` comes back.

The same caller then calls B directly, so the chain's added latency is measured against a
plain echo call on the same machine in the same run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.e2e.audio import Match, match
from tests.e2e.harness import Gateway, callgate, free_rtp_range
from tests.e2e.livecall import (
    RATE,
    baresip_call,
    log_events,
    speech,
    voiced_spans,
    write_wav,
)
from tests.realtime.doubles import check_server_event

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

API_KEY = "sk-chain-upstream"
SENTENCE = "one two three four five, the quick brown fox jumps over the lazy dog"
MARKER = "Chained-Q7"
MAX_LAG_S = 2.0


def wait_log(gateway: Gateway, name: str, timeout: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while not (found := log_events(gateway, name)):
        assert time.monotonic() < deadline, f"{name} never logged:\n" + "\n".join(
            gateway.log_lines()[-40:])
        time.sleep(0.05)
    return found


def watch_sideband(a: Gateway, call_id: str) -> dict[str, Any]:
    """Attach to the call on A as an application does; change the instructions."""
    client = openai.OpenAI(api_key="unused", base_url=f"{a.http}/v1",
                           websocket_base_url=f"ws://127.0.0.1:{a.http_port}/v1",
                           max_retries=0)
    seen: dict[str, Any] = {}
    with client.realtime.connect(call_id=call_id) as connection:
        created = json.loads(connection.recv_bytes())
        check_server_event(created)
        seen["created"] = created
        connection.session.update(session={"type": "realtime", "instructions": MARKER})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ev = json.loads(connection.recv_bytes())
            check_server_event(ev)
            seen.setdefault("types", []).append(ev["type"])
            if ev["type"] == "session.updated" and ev["session"]["instructions"] == MARKER:
                seen["updated"] = ev
                break
    return seen


def call_and_measure(gateway: Gateway, folder: Path, source: Path, during: Any = None
                     ) -> tuple[Match, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Call ``gateway`` saying ``source``; how what came back matches what was sent."""
    with baresip_call(gateway, folder, source) as caller:
        if during is not None:
            during()
        caller.wait_ended(timeout=30)
        sent, received = caller.sent(), caller.received()
    found = match(sent.astype(np.float64), received.astype(np.float64), RATE,
                  max_lag_s=MAX_LAG_S)
    return found, sent, received


def test_audio_goes_through_callgate_chained_to_callgate(tmp_path: Path) -> None:
    source = write_wav(tmp_path / "say.wav", speech(SENTENCE, lead=0.5, tail=2.5))
    low = int(free_rtp_range().split("-")[0])
    with callgate(tmp_path, api_key=API_KEY, rtp_ports=f"{low - 200}-{low - 2}") as b:
        route = {"engine": "realtime", "url": f"ws://127.0.0.1:{b.http_port}/v1/realtime",
                 "api_key": API_KEY, "model": "echo"}
        with callgate(tmp_path, models=json.dumps({"up": route}),
                      default_session=json.dumps({"type": "realtime", "model": "up"})) as a:
            sideband: dict[str, Any] = {}

            def attach() -> None:
                call_id = wait_log(a, "realtime_session_started")[0]["call_id"]
                sideband.update(watch_sideband(a, call_id))

            chain, sent, received = call_and_measure(a, tmp_path / "chain", source, attach)
            upstream = wait_log(b, "realtime_session_started")
            a_log = a.log_path.read_text()
        direct, _, _ = call_and_measure(b, tmp_path / "direct", source)

    # The caller heard its own words back, through A, B's echo and A again.
    spans_sent, spans_heard = voiced_spans(sent), voiced_spans(received)
    assert spans_heard, f"the caller heard nothing back; A's log:\n{a_log[-4000:]}"
    voiced = sum(e - s for s, e in spans_sent)
    assert abs(sum(e - s for s, e in spans_heard) - voiced) < 0.25 * voiced
    # The μ-law payloads pass through A, B and the echo undecoded; only the jitter buffers'
    # concealment may touch them, so the echo must correlate (as for a direct echo call).
    assert chain.coefficient > 0.9, chain
    assert direct.coefficient > 0.9, direct
    added = chain.lag_ms - direct.lag_ms
    print(f"\nchained echo: {chain.lag_ms:.0f} ms (match {chain.coefficient:.3f}); direct "
          f"echo: {direct.lag_ms:.0f} ms (match {direct.coefficient:.3f}); the chain adds "
          f"{added:.0f} ms")
    assert 0 <= added < 400, (chain, direct)

    # A connected to B with the route's key and model; B ran the echo for it. (A may also
    # have opened and closed an upstream session at start, when it preloads the default
    # session's engine: the call's is the last one.)
    call_upstream = log_events(a, "upstream_connected")[-1]["upstream_session_id"]
    assert {u["session_id"]: u.get("model") for u in upstream}[call_upstream] == "echo"
    assert all("call_id" not in u for u in upstream)  # B served sockets, not calls
    # The application on A's sideband saw B's session, and its update went to B and back.
    assert sideband["created"]["session"]["id"] == call_upstream
    assert sideband["updated"]["session"]["id"] == call_upstream
    # The PCMU call made A speak G.711 to B, both ways, whatever the application's update.
    audio = sideband["updated"]["session"]["audio"]
    assert audio["input"]["format"] == audio["output"]["format"] == {"type": "audio/pcmu"}
    assert "response.output_audio.delta" not in sideband["types"]
