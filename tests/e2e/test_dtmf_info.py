"""SIP INFO DTMF end to end: SIPp presses keys with INFO (``application/dtmf-relay`` and
``application/dtmf``), and the application, attached with the official ``openai`` SDK's
``client.realtime.connect(call_id=…)``, sees each as ``input_audio_buffer.dtmf_event_received``
in the order pressed. The RFC 4733 twin is test_dtmf_pcap.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.realtime import InputAudioBufferDtmfEventReceivedEvent

from tests.e2e.harness import callgate, sipp
from tests.e2e.receiver import SECRET, Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

API_KEY = "sk-callgate-info-dtmf-test"
PRESSED = ["5", "9", "#"]  # uac_info_dtmf.xml: dtmf-relay 5, dtmf 9, dtmf-relay Signal=11


def test_info_digits_reach_the_sdk_in_order(tmp_path: Path) -> None:
    ports: dict[str, int] = {}
    seen: list[Any] = []
    attached = threading.Event()
    closed = threading.Event()

    def accept_and_listen(client: openai.OpenAI, call_id: str) -> None:
        client.realtime.calls.accept(call_id, type="realtime", model="echo")
        app = openai.OpenAI(api_key=API_KEY, base_url=str(client.base_url),
                            websocket_base_url=f"ws://127.0.0.1:{ports['http']}/v1",
                            max_retries=0)
        try:
            with app.realtime.connect(call_id=call_id) as connection:
                for server_event in connection:  # ends when the call's session closes
                    attached.set()
                    seen.append(server_event)
        finally:
            closed.set()

    receiver = Receiver("http://unused/v1", accept_and_listen, api_key=API_KEY)
    with callgate(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET,
                  api_key=API_KEY) as gw:
        ports["http"] = gw.http_port
        receiver.client = receiver.client.with_options(base_url=f"{gw.http}/v1")
        with receiver:
            result = sipp(gw, "uac_info_dtmf", tmp_path, timeout=30)
            assert closed.wait(timeout=10), "the WebSocket stayed open after the call ended"

    assert result.returncode == 0 and result.successful == 1, result.output
    assert not receiver.errors, receiver.errors
    assert attached.is_set() and seen[0].type == "session.created"
    digits = [e.event for e in seen if isinstance(e, InputAudioBufferDtmfEventReceivedEvent)]
    assert digits == PRESSED, (digits, [e.type for e in seen])
