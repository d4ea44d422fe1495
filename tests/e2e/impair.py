"""A bad network between a caller and the gateway, in user space: a SIP-aware UDP relay that
drops and delays RTP the way ``tc qdisc … netem delay 50ms 50ms loss 10%`` would.

Kernels without ``sch_netem`` (many container and microVM kernels) cannot shape loopback
traffic, so the relay puts itself on the media path instead: the caller dials the relay, which
passes the INVITE transaction on to the gateway with a Via of its own, and rewrites the SDP
offer and answer so that each side sends its RTP to one of the relay's two media sockets.
In-dialog requests (ACK, BYE) go straight between the two ends as their Contacts say; only
media is impaired. Each RTP packet, either way, is dropped with probability ``loss`` or sent
on after a delay drawn uniformly from ``delay ± jitter`` (so packets overtake each other, as
with netem). RTCP is left alone: it goes to the ports the SDP names, straight to each end.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

Addr = tuple[str, int]
HOST = "127.0.0.1"

_BRANCH = re.compile(rb"branch=([^;,\s]+)", re.IGNORECASE)
_VIA = re.compile(rb"^(?:via|v)\s*:", re.IGNORECASE)
_CONNECTION = re.compile(rb"^c=IN IP4 (\S+)", re.MULTILINE)
_AUDIO = re.compile(rb"^m=audio (\d+)", re.MULTILINE)
_LENGTH = re.compile(rb"^(?:content-length|l)\s*:", re.IGNORECASE)


@dataclass
class Impairment:
    loss: float = 0.10
    delay_ms: float = 50.0
    jitter_ms: float = 50.0
    seed: int = 1


@dataclass
class Direction:
    """What happened to one direction's RTP."""

    forwarded: int = 0
    dropped: int = 0
    delays_ms: list[float] = field(default_factory=list)


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.on_datagram(data, addr)

    def send(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


class ImpairedPath:
    """One call's way from a caller to the gateway at ``gateway`` (its SIP address). Dial
    ``sip:USER@127.0.0.1:<sip_port>``; ``upstream`` and ``downstream`` count the caller's and
    the gateway's RTP."""

    def __init__(self, gateway: Addr, impairment: Impairment) -> None:
        self.gateway = gateway
        self.impairment = impairment
        self.rng = random.Random(impairment.seed)
        self.upstream = Direction()
        self.downstream = Direction()
        self._callers: dict[bytes, Addr] = {}  # our Via branch -> who sent the request
        self._caller_media: Addr | None = None
        self._gateway_media: Addr | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def sip_port(self) -> int:
        return self._sip.port

    def __enter__(self) -> ImpairedPath:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        def close() -> None:
            for sock in (self._sip, self._to_caller, self._to_gateway):
                if sock.transport is not None:
                    sock.transport.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _open(self) -> None:
        async def bind(handler: Callable[[bytes, Addr], None]) -> _Socket:
            _, protocol = await self._loop.create_datagram_endpoint(
                lambda: _Socket(handler), local_addr=(HOST, 0))
            return protocol

        self._sip = await bind(self._on_sip)
        self._to_caller = await bind(self._from_caller)     # the caller sends RTP here
        self._to_gateway = await bind(self._from_gateway)   # the gateway sends RTP here

    # -- signalling ---------------------------------------------------------------------------

    def _on_sip(self, data: bytes, addr: Addr) -> None:
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].startswith(b"SIP/2.0"):
            self._response(lines, body)
        elif sep:
            self._request(lines, body, addr)

    def _request(self, lines: list[bytes], body: bytes, sender: Addr) -> None:
        via = next((line for line in lines if _VIA.match(line)), b"")
        found = _BRANCH.search(via)
        # Derived from the caller's branch, so a retransmission or a CANCEL maps to the same
        # transaction at the gateway.
        branch = b"z9hG4bKimpair" + (found.group(1)[-24:] if found else b"0")
        self._callers[branch] = sender
        ours = f"Via: SIP/2.0/UDP {HOST}:{self.sip_port};branch=".encode() + branch
        if _AUDIO.search(body):
            self._caller_media, body = _reroute(body, self._to_gateway.port)
        self._sip.send(_message([lines[0], ours, *lines[1:]], body), self.gateway)

    def _response(self, lines: list[bytes], body: bytes) -> None:
        index = next((i for i, line in enumerate(lines) if _VIA.match(line)), None)
        if index is None:
            return
        found = _BRANCH.search(lines[index])
        caller = self._callers.get(found.group(1)) if found else None
        if caller is None:
            return
        if _AUDIO.search(body):
            self._gateway_media, body = _reroute(body, self._to_caller.port)
        self._sip.send(_message(lines[:index] + lines[index + 1:], body), caller)

    # -- media --------------------------------------------------------------------------------

    def _from_caller(self, data: bytes, addr: Addr) -> None:
        self._impair(data, self._to_gateway, self._gateway_media, self.upstream)

    def _from_gateway(self, data: bytes, addr: Addr) -> None:
        self._impair(data, self._to_caller, self._caller_media, self.downstream)

    def _impair(self, data: bytes, out: _Socket, to: Addr | None, seen: Direction) -> None:
        if to is None:
            return
        spec = self.impairment
        if self.rng.random() < spec.loss:
            seen.dropped += 1
            return
        delay = max(0.0, self.rng.uniform(spec.delay_ms - spec.jitter_ms,
                                          spec.delay_ms + spec.jitter_ms))
        seen.forwarded += 1
        seen.delays_ms.append(delay)
        self._loop.call_later(delay / 1000, out.send, data, to)


def _reroute(body: bytes, port: int) -> tuple[Addr, bytes]:
    """The media address an SDP names, and the SDP naming the relay's ``port`` instead."""
    host = _CONNECTION.search(body)
    audio = _AUDIO.search(body)
    assert host is not None and audio is not None, body
    media = (host.group(1).decode(), int(audio.group(1)))
    body = _CONNECTION.sub(b"c=IN IP4 " + HOST.encode(), body)
    body = _AUDIO.sub(b"m=audio " + str(port).encode(), body, count=1)
    return media, body


def _message(lines: list[bytes], body: bytes) -> bytes:
    head = [line for line in lines if not _LENGTH.match(line)]
    head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body
