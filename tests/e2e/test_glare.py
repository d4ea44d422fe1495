"""Glare on the wire: the caller re-INVITEs while callgate's own session refresh is pending.

RFC 3261 §14: the side that receives an offer while its own is unanswered answers 491, and
each side offers again after a random wait; callgate, which did not pick the Call-ID, waits
0-2 s. The caller here is a scripted UAC on a UDP socket; callgate runs in process so the
test can make its session-refresh timer fire now instead of after half an hour.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from callgate.sip.message import Request, Response
from tests.e2e.harness import PROJECT_ID, SDP, InProcessGateway, ScriptedUac, in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

async def _glare() -> dict[str, float]:
    async with in_process(rtp_ports=10) as gw:
        uac = ScriptedUac(gw.sip_addresses["udp"])
        try:
            return await _call_with_glare(gw, uac)
        finally:
            uac.sock.close()


async def _call_with_glare(gw: InProcessGateway, uac: ScriptedUac) -> dict[str, float]:
    uri = f"sip:{PROJECT_ID}@127.0.0.1:{uac.gateway[1]}"
    # The call: INVITE (no Session-Expires: callgate becomes the refresher), 200, ACK.
    await uac.send(uac.request("INVITE", uri, 1, "inv1", to=f"<{uri}>",
                               body=SDP.format(port=uac.rtp_port)))
    ok = await uac.receive(" 200 ")
    assert isinstance(ok, Response)
    to = ok.headers.get("To") or ""
    await uac.send(uac.request("ACK", uri, 1, "ack1", to=to))
    assert gw.calls is not None and gw.calls.core is not None
    call = next(iter(gw.calls.core.calls.values()))
    assert call.timer is not None and call.timer.refresher == "uas"

    # callgate's refresh is due: it re-INVITEs (the caller's Allow has no UPDATE).
    gw.calls.core.handle_timer(call.deadlines["session"])
    gw.calls.pump()
    ours = await uac.receive("INVITE")
    assert isinstance(ours, Request) and ours.body

    # Meanwhile the caller offers too: callgate has an offer out, so 491.
    await uac.send(uac.request("INVITE", uri, 2, "reinv2", to=to,
                               body=SDP.format(port=uac.rtp_port)))
    refused = await uac.receive(" 491 ")
    assert isinstance(refused, Response) and refused.cseq.seq == 2
    await uac.send(uac.request("ACK", uri, 2, "reinv2", to=to))  # non-2xx: same branch

    # The caller refuses callgate's offer the same way; callgate ACKs and tries again.
    await uac.send(uac.answer(ours, 491, "Request Pending"))
    refused_at = time.monotonic()
    ack = await uac.receive("ACK")
    assert isinstance(ack, Request) and ack.cseq.seq == ours.cseq.seq
    again = await uac.receive("INVITE", timeout=5.0)
    waited = time.monotonic() - refused_at
    assert isinstance(again, Request) and again.cseq.seq > ours.cseq.seq and again.body

    # This time the caller accepts: 200 with its SDP, and callgate ACKs it.
    await uac.send(uac.answer(again, 200, "OK", body=SDP.format(port=uac.rtp_port)))
    ack2 = await uac.receive("ACK")
    assert isinstance(ack2, Request) and ack2.cseq.seq == again.cseq.seq

    # With no offer of callgate's pending, the caller's re-INVITE now goes through.
    await uac.send(uac.request("INVITE", uri, 3, "reinv3", to=to,
                               body=SDP.format(port=uac.rtp_port)))
    accepted = await uac.receive(" 200 ")
    assert isinstance(accepted, Response) and accepted.cseq.seq == 3
    await uac.send(uac.request("ACK", uri, 3, "ack3", to=to))
    await uac.send(uac.request("BYE", uri, 4, "bye4", to=to))
    await uac.receive(" 200 ")
    return {"retry_wait_s": waited}


def test_reinvite_glare_is_answered_491_and_both_sides_retry() -> None:
    result = asyncio.run(_glare())
    assert 0.0 <= result["retry_wait_s"] < 2.5, result  # RFC 3261 §14.1: 0-2 s
