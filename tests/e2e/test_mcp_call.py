"""MCP on a real call: a baresip caller asks the local agent a question, the language model
(the scripted loopback peer) calls a tool of a real MCP server built with the ``mcp`` SDK,
callgate runs it, the model reads the result and the caller hears the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import callgate
from tests.e2e.livecall import (
    RATE,
    baresip_call,
    log_events,
    silence,
    speech,
    transcribe,
    voiced_spans,
    wait_logged,
    write_wav,
)
from tests.engines.audio import words
from tests.engines.peer import PeerState, Reply, serve
from tests.interop.mcp_server import HOURS, serve_mcp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

QUESTION = "when are you open on monday"
ANSWER = "We are open from nine to five on Monday."


def test_the_caller_hears_an_answer_that_uses_an_mcp_tool(tmp_path: Path) -> None:
    idle = write_wav(tmp_path / "idle.wav", silence(60.0))
    question = write_wav(tmp_path / "question.wav", speech(QUESTION, tail=10.0))
    state = PeerState(replies=[
        Reply(tool_calls=[{"id": "call_1", "name": "opening_hours",
                           "arguments": '{"day": "Monday"}'}]),
        Reply(pieces=[ANSWER])])
    with serve_mcp() as mcp_url, serve(state) as llm_url:
        session = {"type": "realtime", "model": "local", "instructions": "Clinic front desk.",
                   "tools": [{"type": "mcp", "server_label": "clinic", "server_url": mcp_url,
                              "require_approval": "never"}]}
        with callgate(tmp_path, default_session=json.dumps(session), llm_base_url=llm_url,
                      llm_model="peer-model") as gw, \
                baresip_call(gw, tmp_path / "caller", idle) as caller:
            wait_logged(gw, "realtime_session_started", timeout=30)
            caller.say(question)
            caller.wait_ended(timeout=45)
            sent, received = caller.sent(), caller.received()
            done = log_events(gw, "response_done")

    assert len(state.requests) == 2, f"log:\n{gw.log_path.read_text()[-3000:]}"
    assert [t["function"]["name"] for t in state.requests[0]["tools"]] == \
        ["opening_hours", "cancel_booking"]
    follow_up = state.requests[1]["messages"]
    assert any(m.get("role") == "tool" and m.get("content") == HOURS for m in follow_up)
    assert done and done[0]["status"] == "completed", done
    question_end = voiced_spans(sent)[-1][1]
    replies = [span for span in voiced_spans(received) if span[0] >= question_end]
    assert replies, f"no speech came back: {voiced_spans(received)}"
    heard = transcribe(received[int(replies[0][0] * RATE) - RATE // 10:])
    assert words(heard) & {"nine", "five", "monday", "open"}, heard
