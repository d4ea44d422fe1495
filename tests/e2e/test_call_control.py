"""Call control end to end: a webhook receiver using only the ``openai`` SDK drives SIPp calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.harness import callgate, sipp
from tests.e2e.receiver import SECRET, Receiver

pytestmark = pytest.mark.slow

API_KEY = "sk-callgate-test"


def _gateway(tmp_path: Path, receiver_port: int, **extra: str):  # type: ignore[no-untyped-def]
    return callgate(tmp_path, webhook_url=f"http://127.0.0.1:{receiver_port}/hook",
                    webhook_secret=SECRET, api_key=API_KEY, default_model="echo", **extra)


def _run(tmp_path: Path, scenario: str, action,  # type: ignore[no-untyped-def]
         last_webhook: str | None = None, **extra: str):
    receiver = Receiver("http://placeholder/v1", action, api_key=API_KEY)
    with _gateway(tmp_path, receiver.port, **extra) as gw:
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        with receiver:
            result = sipp(gw, scenario, tmp_path, timeout=40)
            if last_webhook is not None:
                assert receiver.wait_for(last_webhook), [e.type for e in receiver.events]
        return gw, receiver, result


def test_accept_answers_the_call(tmp_path: Path) -> None:
    def accept(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="gpt-realtime",
                                     instructions="You are a test line.")

    _, receiver, result = _run(tmp_path, "uac_basic", accept)
    assert result.returncode == 0, result.output
    assert not receiver.errors
    [event] = receiver.events
    assert event.data.call_id.startswith("rtc_")
    names = {h.name for h in event.data.sip_headers}
    assert {"From", "To", "Call-ID", "X-Test-Case"} <= names


def test_reject_with_486(tmp_path: Path) -> None:
    def reject(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.reject(call_id, status_code=486)

    _, receiver, result = _run(tmp_path, "uac_rejected", reject)
    assert result.returncode == 0, result.output
    assert not receiver.errors


def test_refer_sends_sip_refer(tmp_path: Path) -> None:
    def accept_then_refer(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        time.sleep(0.5)
        client.realtime.calls.refer(call_id, target_uri="tel:+14155550123")

    gw, receiver, result = _run(tmp_path, "uac_refer", accept_then_refer,
                                  last_webhook="realtime.call.transferred")
    assert result.returncode == 0, result.output
    assert not receiver.errors
    assert any("transferred" in line for line in gw.events("call.state"))
    # Each step reached the application, signed, in order (uac_refer.xml: 202, then
    # sipfrags 100, 180, 200).
    steps = [(e.type, e.data.sip_status) for e in receiver.events[1:]]
    assert steps == [("realtime.call.transfer_progress", 202),
                     ("realtime.call.transfer_progress", 100),
                     ("realtime.call.transfer_progress", 180),
                     ("realtime.call.transferred", 200)], steps
    assert all(e.data.target_uri == "tel:+14155550123" for e in receiver.events[1:])


def test_a_busy_transfer_target_leaves_the_call_up(tmp_path: Path) -> None:
    seen: list[Any] = []

    def accept_refer_listen(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        ws = client.with_options(websocket_base_url=str(client.base_url).replace("http", "ws"))
        with ws.realtime.connect(call_id=call_id) as connection:
            for server_event in connection:  # ends when the call's session closes
                seen.append(server_event)
                if server_event.type == "session.created":
                    client.realtime.calls.refer(call_id, target_uri="sip:sales@example.org")

    gw, receiver, result = _run(tmp_path, "uac_refer_busy", accept_refer_listen,
                                  last_webhook="realtime.call.transfer_failed")
    # uac_refer_busy.xml hangs up itself after the 486: a 481 to its BYE (the call gone)
    # or a BYE from callgate would fail the scenario.
    assert result.returncode == 0, result.output
    assert not receiver.errors, receiver.errors
    steps = [(e.type, e.data.sip_status) for e in receiver.events[1:]]
    assert steps == [("realtime.call.transfer_progress", 202),
                     ("realtime.call.transfer_progress", 100),
                     ("realtime.call.transfer_progress", 180),
                     ("realtime.call.transfer_failed", 486)], steps
    assert receiver.events[-1].data.reason == "Busy Here"
    [error] = [e for e in seen if e.type == "error"]
    assert error.error.code == "transfer_failed" and "486 Busy Here" in error.error.message
    assert "sip:sales@example.org" in error.error.message
    assert any("peer hung up" in line for line in gw.events("call.state"))


def test_hangup_sends_bye(tmp_path: Path) -> None:
    def accept_then_hangup(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        time.sleep(0.5)
        client.realtime.calls.hangup(call_id)
        client.realtime.calls.hangup(call_id)  # a retry changes nothing

    _, receiver, result = _run(tmp_path, "uac_wait_bye", accept_then_hangup)
    assert result.returncode == 0, result.output
    assert not receiver.errors


def test_errors_have_openai_shapes(tmp_path: Path) -> None:
    outcomes: dict[str, object] = {}

    def probe(client: openai.OpenAI, call_id: str) -> None:
        for name, call in {
            "unknown_call": lambda: client.realtime.calls.accept("rtc_nope", type="realtime"),
            "unknown_model": lambda: client.realtime.calls.accept(call_id, type="realtime",
                                                                  model="no-such-model"),
            "bad_key": lambda: client.with_options(api_key="wrong").realtime.calls.hangup(call_id),
            # a setting the cascade cannot carry out: refused before the call is answered
            "unsupported": lambda: client.realtime.calls.accept(
                call_id, type="realtime", model="local", prompt={"id": "pmpt_123"}),
        }.items():
            try:
                call()
            except openai.APIStatusError as exc:
                outcomes[name] = exc
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        client.realtime.calls.accept(call_id, type="realtime", model="echo")  # replay: fine
        try:
            client.realtime.calls.reject(call_id, status_code=486)
        except openai.APIStatusError as exc:
            outcomes["reject_after_accept"] = exc

    _, receiver, result = _run(tmp_path, "uac_basic", probe)
    assert result.returncode == 0, result.output
    assert not receiver.errors
    assert isinstance(outcomes["unknown_call"], openai.NotFoundError)
    assert isinstance(outcomes["unknown_model"], openai.BadRequestError)
    assert "echo" in str(outcomes["unknown_model"])
    assert isinstance(outcomes["bad_key"], openai.AuthenticationError)
    unsupported = outcomes["unsupported"]
    assert isinstance(unsupported, openai.BadRequestError), unsupported
    assert isinstance(unsupported.body, dict) and unsupported.body["param"] == "prompt"
    assert isinstance(outcomes["reject_after_accept"], openai.ConflictError)


@pytest.mark.parametrize("behaviour", ["500", "down"])
def test_broken_receiver_does_not_leak_the_call(tmp_path: Path, behaviour: str) -> None:
    # A receiver that fails (500) is retried while the call rings, then the accept timeout
    # gives the caller 480. One that cannot be reached at all (nothing listens on port 9)
    # cannot take the call: after the retries the caller gets 503 at once, not at the timeout.
    receiver = Receiver("http://unused/v1", lambda client, call_id: None, status=500)
    port = receiver.port if behaviour == "500" else 9
    with _gateway(tmp_path, port, accept_timeout="10" if behaviour == "down" else "2") as gw:
        if behaviour == "500":
            with receiver:
                result = sipp(gw, "uac_unanswered", tmp_path, timeout=20)
            assert len(receiver.events) >= 2  # retried with backoff while ringing
            assert any("new=timed_out" in line for line in gw.events("call.state"))
        else:
            started = time.monotonic()
            result = sipp(gw, "uac_unavailable", tmp_path, timeout=20)
            assert time.monotonic() - started < 8, "the call rang on to the accept timeout"
            assert any("webhook not delivered" in line for line in gw.events("call.state"))
        assert result.returncode == 0, result.output
