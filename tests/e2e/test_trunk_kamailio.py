"""callgate behind a Kamailio registrar/proxy with digest auth, as behind a carrier or PBX.

callgate registers to Kamailio (401 challenge); a baresip caller registered there
dials callgate's AOR, Kamailio routes the call over callgate's binding and the caller hears
the echo; the official ``openai`` SDK places an outbound call (``POST /realtime/calls``)
that callgate sends through Kamailio, answering its 407, to a registered baresip callee,
whose answer starts the session so that the callee hears the agent (the ``echo`` model)
from its first word; every progress webhook verifies with ``webhooks.unwrap``; and an
INVITE from a source no trunk admits gets 403 with no session and no webhook.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.audio import phrase_wav, piecewise_match
from tests.e2e.baresip import Baresip, baresip_call, logged
from tests.e2e.harness import PROJECT_ID, Gateway, callgate
from tests.e2e.kamailio import Kamailio, kamailio
from tests.e2e.receiver import SECRET, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

USERS = {"callgate": "cg-secret", "alice": "alice-pw", "bob": "bob-pw"}
PHRASE = "Testing the callgate trunk, one two three four five."


def _accept_echo(client: openai.OpenAI, call_id: str) -> None:
    client.realtime.calls.accept(call_id, type="realtime", model="echo")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    with kamailio(tmp_path_factory.mktemp("kamailio"), USERS) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    # The receiver's client only verifies webhooks and accepts calls: any base URL will do
    # until the gateway exists, and it is set below.
    with Receiver("http://127.0.0.1:9/v1", _accept_echo) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, proxy: Kamailio,
            receiver: Receiver) -> Iterator[Gateway]:
    trunks = {"kam": {"address": f"sip:127.0.0.1:{proxy.port}", "username": "callgate",
                      "password": USERS["callgate"], "register": True, "expires": 120}}
    with callgate(tmp_path_factory.mktemp("gw"), trunks=json.dumps(trunks),
                  webhook_url=receiver.url, webhook_secret=SECRET) as gw:
        receiver.client.base_url = f"{gw.http}/v1"  # type: ignore[assignment]
        yield gw


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _heard_echo(phone: Baresip) -> float:
    sent, rate = phone.dump("enc")
    received, _ = phone.dump("dec")
    echo = piecewise_match(sent, received, rate)
    assert len(echo.lags_ms) >= 6, echo
    return echo.coefficient


def test_callgate_registers(gateway: Gateway, proxy: Kamailio) -> None:
    _wait(lambda: gateway.events("trunk.registered"), 15, "callgate to register")
    proxy.wait_for("registered sip:callgate@", 5)
    registered = logged(gateway, "trunk.registered")[-1]
    assert registered["trunk"] == "kam" and int(registered["expires"]) > 0
    assert USERS["callgate"] not in "\n".join(gateway.log_lines())  # never logged
    # The registration as the API shows it: state and binding, never the credentials.
    listed = httpx.get(f"{gateway.http}/v1/trunks", timeout=5).json()
    (kam,) = listed["data"]
    assert kam["name"] == "kam" and kam["registers"] and kam["state"] == "registered", listed
    assert kam["expires"] == int(registered["expires"]) and kam["public_address"], listed
    assert USERS["callgate"] not in json.dumps(listed)


def test_a_caller_on_the_registrar_reaches_callgate_over_its_binding(
        gateway: Gateway, proxy: Kamailio, receiver: Receiver, tmp_path: Path) -> None:
    _wait(lambda: gateway.events("trunk.registered"), 15, "callgate to register")
    source = phrase_wav(tmp_path / "phrase.wav", PHRASE, rate=8000, channels=1)
    account = f"<sip:alice@127.0.0.1:{proxy.port}>;auth_pass={USERS['alice']};regint=0"
    with baresip_call(tmp_path / "alice", f"sip:callgate@127.0.0.1:{proxy.port}", source,
                      account=account) as phone:
        phone.wait_established(timeout=20)
        phone.wait_ended(timeout=25)
    proxy.wait_for("authenticated INVITE from alice to callgate", 1)
    incoming = [e for e in receiver.events if e.type == "realtime.call.incoming"]
    assert incoming and not receiver.errors, receiver.errors
    call = [f for f in logged(gateway, "call.incoming")
            if f["call_id"] == incoming[-1].data.call_id]
    assert call and call[0]["trunk"] == "kam"
    assert _heard_echo(phone) >= 0.9


def test_outbound_call_through_the_407_starts_the_session_at_the_answer(
        gateway: Gateway, proxy: Kamailio, receiver: Receiver, tmp_path: Path) -> None:
    _wait(lambda: gateway.events("trunk.registered"), 15, "callgate to register")
    source = phrase_wav(tmp_path / "phrase.wav", PHRASE, rate=8000, channels=1)
    account = (f"<sip:bob@127.0.0.1:{proxy.port}>;auth_pass={USERS['bob']};regint=60;"
               "answermode=auto")
    with baresip_call(tmp_path / "bob", None, source, account=account) as phone:
        proxy.wait_for("registered sip:bob@", 15)
        client = openai.OpenAI(api_key="sk-test", base_url=f"{gateway.http}/v1",
                               webhook_secret=SECRET)
        created = client.post("/realtime/calls", cast_to=dict, body={
            "session": {"type": "realtime", "model": "echo"},
            "transport": {"type": "sip", "destination": f"sip:bob@127.0.0.1:{proxy.port}",
                          "trunk": "kam", "headers": {"X-Campaign": "e2e"}}})
        assert created["status"] == "dialing" and created["object"] == "realtime.call"
        call_id = created["id"]
        phone.wait_established(timeout=20)
        phone.wait_ended(timeout=25)

    proxy.wait_for("challenged INVITE from callgate", 1)
    proxy.wait_for("authenticated INVITE from callgate to bob", 1)
    assert [f["status"] for f in logged(gateway, "call.authenticating")
            if f["call_id"] == call_id] == ["407"]

    def kinds() -> list[str]:
        return [e.type for e in receiver.events
                if getattr(e.data, "call_id", None) == call_id]

    _wait(lambda: "realtime.call.ended" in kinds(), 10, "the ended webhook")
    assert kinds() == ["realtime.call.ringing", "realtime.call.answered",
                       "realtime.call.ended"], kinds()
    assert not receiver.errors
    assert _heard_echo(phone) >= 0.9


def test_an_invite_no_trunk_admits_gets_403(gateway: Gateway, receiver: Receiver) -> None:
    before = len(receiver.events)
    invite = (f"INVITE sip:{PROJECT_ID}@127.0.0.1:{gateway.sip_port} SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKstranger\r\n"
              "From: <sip:mallory@127.0.0.1>;tag=m1\r\n"
              f"To: <sip:{PROJECT_ID}@127.0.0.1>\r\nCall-ID: stranger-1\r\n"
              "CSeq: 1 INVITE\r\nContact: <sip:mallory@127.0.0.1:{port}>\r\n"
              "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto(invite.replace("{port}", str(port)).encode(),
                    ("127.0.0.1", gateway.sip_port))
        while True:
            answer = sock.recv(65535).decode()
            if not answer.startswith("SIP/2.0 100"):
                break
    assert answer.startswith("SIP/2.0 403"), answer
    assert gateway.events("call.refused_source")
    assert not [f for f in logged(gateway, "call.incoming")
                if f.get("sip_call_id") == "stranger-1"]
    time.sleep(0.5)  # a webhook would have been sent at once
    assert len(receiver.events) == before
