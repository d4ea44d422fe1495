"""Glare on the wire: the caller re-INVITEs while callgate's own session refresh is pending.

RFC 3261 §14: the side that receives an offer while its own is unanswered answers 491, and
each side offers again after a random wait; callgate, which did not pick the Call-ID, waits
0-2 s. The caller here is a scripted UAC on a UDP socket; callgate runs in process so the
test can make its session-refresh timer fire now instead of after half an hour.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from callgate.sip.message import Request, Response, parse_message
from tests.e2e.harness import PROJECT_ID, InProcessGateway, free_port, in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SDP = ("v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


class Uac:
    """Just enough of a caller: sends what it is given, hands back what arrives."""

    def __init__(self, gateway: tuple[str, int]) -> None:
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.rtp_port = free_port(both=False)

    def request(self, method: str, uri: str, cseq: int, branch: str, *, to: str,
                body: str = "", extra: str = "") -> bytes:
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{branch}\r\n"
                f"From: <sip:caller@127.0.0.1>;tag=uac1\r\nTo: {to}\r\n"
                f"Call-ID: glare-1@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port}>\r\nMax-Forwards: 70\r\n"
                f"Allow: INVITE, ACK, BYE, CANCEL\r\n{extra}{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def answer(self, request: Request, status: int, reason: str, body: str = "") -> bytes:
        vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"SIP/2.0 {status} {reason}\r\n{vias}"
                f"From: {request.headers.get('From')}\r\nTo: {request.headers.get('To')}\r\n"
                f"Call-ID: {request.call_id}\r\nCSeq: {request.headers.get('CSeq')}\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port}>\r\n{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, self.gateway)

    async def receive(self, want: str, timeout: float = 5.0) -> Request | Response:
        """The next message whose first line contains ``want`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535),
                                             max(0.01, deadline - loop.time()))
            if want in data.split(b"\r\n", 1)[0].decode():
                return parse_message(data)


async def _glare() -> dict[str, float]:
    async with in_process(rtp_ports=10) as gw:
        uac = Uac(gw.sip_addresses["udp"])
        try:
            return await _call_with_glare(gw, uac)
        finally:
            uac.sock.close()


async def _call_with_glare(gw: InProcessGateway, uac: Uac) -> dict[str, float]:
    uri = f"sip:{PROJECT_ID}@127.0.0.1:{uac.gateway[1]}"
    # The call: INVITE (no Session-Expires: callgate becomes the refresher), 200, ACK.
    await uac.send(uac.request("INVITE", uri, 1, "inv1", to=f"<{uri}>",
                               body=SDP.format(port=uac.rtp_port)))
    ok = await uac.receive(" 200 ")
    assert isinstance(ok, Response)
    to = ok.headers.get("To") or ""
    await uac.send(uac.request("ACK", uri, 1, "ack1", to=to))
    assert gw.calls is not None and gw.calls.signalling is not None
    call = next(iter(gw.calls.calls.values()))
    assert call.timer is not None and call.timer.refresher == "uas"

    # callgate's refresh is due: it re-INVITEs (the caller's Allow has no UPDATE).
    gw.calls.signalling._session_timer_fired(call, call.timer)
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
