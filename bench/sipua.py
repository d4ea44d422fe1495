"""A minimal SIP caller (UAC over UDP) for the media benchmarks: INVITE with an SDP offer,
ACK, BYE, and a 200 for the gateway's own BYE. Requests are written like SIPp's templates;
responses are parsed with callgate's own parser. One socket carries every call.

It is a load tool, not a user agent: no authentication, no forking, no re-INVITEs (the benchmarks'
calls are far shorter than a session refresh, RFC 4028).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

from callgate.sip.message import Request, Response, SipUri, make_response, parse_message
from callgate.sip.sdp import parse_sdp

T1 = 0.5


class CallFailed(RuntimeError):
    pass


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str
    remote_target: str
    remote_rtp: tuple[str, int]
    invite_sent: float
    answered: float
    to_header: str
    route: str = ""  # Route header lines from the 2xx's Record-Route (a proxy on the path)
    cseq: int = 1
    ended_by_gateway: bool = False


class SipCaller(asyncio.DatagramProtocol):
    def __init__(self, target: tuple[str, int], service: str, *, media_port: int) -> None:
        self.target = target
        self.service = service
        self.media_port = media_port
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._pending: dict[tuple[str, str], asyncio.Future[Response]] = {}
        self._proceeding: set[tuple[str, str]] = set()
        self._ids = itertools.count(1)
        self.dialogs: dict[str, Dialog] = {}
        self.ended_by_gateway = 0
        self._tag = os.urandom(4).hex()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                           local_addr=("127.0.0.1", 0))
        self.transport = transport
        self.local = transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- wire --------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = parse_message(data)
        except ValueError:
            return
        if isinstance(message, Response):
            future = self._pending.get((message.call_id, message.cseq.method))
            if future is not None and not future.done():
                if message.status >= 200:
                    future.set_result(message)
                else:  # §17.1.1.2: a provisional answer stops the INVITE retransmissions
                    self._proceeding.add((message.call_id, message.cseq.method))
            return
        assert isinstance(message, Request)
        if message.method == "BYE":
            dialog = self.dialogs.pop(message.call_id, None)
            if dialog is not None:
                dialog.ended_by_gateway = True
                self.ended_by_gateway += 1
        status = 200 if message.method in ("BYE", "OPTIONS") else 501
        if message.method != "ACK" and self.transport is not None:
            self.transport.sendto(make_response(message, status).to_bytes(), addr)

    async def _transact(self, call_id: str, method: str, data: bytes,
                        timeout: float = 32.0) -> Response:
        """Send ``data`` and wait for its final response, retransmitting per RFC 3261 §17.1
        (T1 doubling, capped at 4 s) until one comes or ``timeout`` passes."""
        assert self.transport is not None
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[(call_id, method)] = future
        interval, deadline = T1, time.monotonic() + timeout
        try:
            while True:
                if (call_id, method) not in self._proceeding:
                    self.transport.sendto(data, self.target)
                wait = min(interval, deadline - time.monotonic())
                if wait <= 0:
                    raise CallFailed(f"{method} timed out")
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), wait)
                interval = min(interval * 2, 4.0)
        finally:
            self._pending.pop((call_id, method), None)
            self._proceeding.discard((call_id, method))

    # -- calls -------------------------------------------------------------------------------

    def _headers(self, method: str, uri: str, call_id: str, from_tag: str, cseq: int,
                 to: str) -> str:
        ip, port = self.local
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{os.urandom(8).hex()}\r\n"
                f"From: <sip:bench@{ip}:{port}>;tag={from_tag}\r\n"
                f"To: {to}\r\n"
                f"Call-ID: {call_id}\r\n"
                f"CSeq: {cseq} {method}\r\n"
                f"Contact: <sip:bench@{ip}:{port}>\r\n"
                f"Max-Forwards: 70\r\n")

    async def call(self) -> Dialog:
        """Place one call offering PCMU (+ telephone-event) to RTP at ``media_port``; returns
        once the 200 is ACKed. Raises CallFailed for a non-2xx answer or a timeout."""
        ip, _ = self.local
        n = next(self._ids)
        call_id = f"bench-{self._tag}-{n}@{ip}"
        from_tag = f"{self._tag}{n}"
        host, port = self.target
        uri = f"sip:{self.service}@{host}:{port}"
        sdp = (f"v=0\r\no=bench {n} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
               f"m=audio {self.media_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
               "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
               "a=sendrecv\r\n").encode()
        invite = (self._headers("INVITE", uri, call_id, from_tag, 1, f"<{uri}>")
                  + "Content-Type: application/sdp\r\n"
                  + f"Content-Length: {len(sdp)}\r\n\r\n").encode() + sdp
        sent = time.monotonic()
        response = await self._transact(call_id, "INVITE", invite)
        answered = time.monotonic()
        if response.status >= 300:
            raise CallFailed(f"INVITE answered {response.status} {response.reason}")
        contact = response.contacts[0].uri if response.contacts else None
        target = str(contact) if isinstance(contact, SipUri) else uri
        offer = parse_sdp(response.body)
        audio = next(m for m in offer.media if m.media == "audio")
        rtp_host = offer.connection_for(audio) or host
        to = response.headers.get("To") or f"<{uri}>"
        # RFC 3261 §12.1.2: the route set is the Record-Route in reverse; in-dialog requests
        # still go to the first hop, the proxy the INVITE went through.
        route = "".join(f"Route: {r}\r\n"
                        for r in reversed(response.headers.get_all("Record-Route")))
        dialog = Dialog(call_id, from_tag, response.to.tag or "", target, (rtp_host, audio.port),
                        sent, answered, to, route)
        self.dialogs[call_id] = dialog
        ack = (self._headers("ACK", target, call_id, from_tag, 1, to) + route
               + "Content-Length: 0\r\n\r\n")
        assert self.transport is not None
        self.transport.sendto(ack.encode(), self.target)
        return dialog

    async def hangup(self, dialog: Dialog) -> None:
        if self.dialogs.pop(dialog.call_id, None) is None:
            return  # the gateway hung up already
        dialog.cseq += 1
        bye = (self._headers("BYE", dialog.remote_target, dialog.call_id, dialog.from_tag,
                             dialog.cseq, dialog.to_header) + dialog.route
               + "Content-Length: 0\r\n\r\n")
        with contextlib.suppress(CallFailed):
            await self._transact(dialog.call_id, "BYE", bye.encode(), timeout=8.0)
