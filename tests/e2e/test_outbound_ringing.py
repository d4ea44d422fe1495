"""An outbound call while it rings, against a scripted callee on a UDP socket: a ``?call_id=``
WebSocket observer attaches before the answer, the answer is ACKed and starts media, and
``/hangup`` ends the call with BYE; a second call hung up while ringing is CANCELled."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from callgate.sip.message import Request, make_response
from tests.e2e.harness import SDP, ScriptedUac, in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def _answer(uac: ScriptedUac, invite: Request, status: int, body: str = "") -> bytes:
    response = make_response(invite, status, to_tag="callee1", body=body.encode(),
                             content_type="application/sdp" if body else None,
                             headers=[("Contact", f"<sip:bob@127.0.0.1:{uac.port}>")])
    return response.to_bytes()


async def _scenario() -> None:
    async with in_process(rtp_ports=10) as gw:
        callee = ScriptedUac(gw.sip_addresses["udp"])
        http = f"http://127.0.0.1:{gw.settings.http_port}"
        body = {"session": {"type": "realtime", "model": "echo"},
                "transport": {"type": "sip", "destination": "sip:bob@127.0.0.1",
                              "trunk": {"provider_url": f"sip:127.0.0.1:{callee.port}"}}}
        try:
            async with httpx.AsyncClient(base_url=http, timeout=10) as api:
                created = (await api.post("/v1/realtime/calls", json=body)).json()
                call_id = created["id"]
                invite = await callee.receive("INVITE")
                assert isinstance(invite, Request)
                await callee.send(_answer(callee, invite, 180))

                ws_url = f"ws://127.0.0.1:{gw.settings.http_port}/v1/realtime?call_id={call_id}"
                async with websockets.connect(ws_url) as observer:
                    hello = json.loads(await asyncio.wait_for(observer.recv(), 5))
                    assert hello["type"] == "session.created"
                    assert gw.calls is not None and gw.calls.core is not None
                    assert gw.calls.core.calls[call_id].state.value == "ringing"

                    await callee.send(_answer(callee, invite, 200,
                                              SDP.format(port=callee.rtp_port)))
                    ack = await callee.receive("ACK")
                    assert isinstance(ack, Request) and ack.cseq.seq == invite.cseq.seq
                    assert (await api.post(f"/v1/realtime/calls/{call_id}/hangup")).json() == {}
                    bye = await callee.receive("BYE")
                    assert isinstance(bye, Request)

                second = (await api.post("/v1/realtime/calls", json=body)).json()["id"]
                invite2 = await callee.receive("INVITE")
                assert isinstance(invite2, Request)
                await callee.send(_answer(callee, invite2, 180))
                await asyncio.sleep(0.05)
                assert (await api.post(f"/v1/realtime/calls/{second}/hangup")).json() == {}
                cancel = await callee.receive("CANCEL")
                assert isinstance(cancel, Request)
                assert cancel.headers.get("Via") == invite2.headers.get("Via")
        finally:
            callee.sock.close()


def test_observer_attaches_while_ringing_and_hangup_ends_or_cancels() -> None:
    asyncio.run(_scenario())
