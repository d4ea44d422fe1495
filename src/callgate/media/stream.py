"""MediaStream: the asyncio shell around one call's MediaSession.

It owns what the sans-IO core must not: the RTP and RTCP UDP sockets (an even/odd pair from the
PortPool), the registration with the shared SendTick, the monotonic clock, and the DNS lookup
when the SDP names a host. Everything else (latching, SRTP, jitter buffer, codecs, pacing,
RTCP, DTMF) is the MediaSession's, which this class feeds and forwards to.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from callgate.log import event
from callgate.media.formats import AudioFormat
from callgate.media.offer_answer import NegotiatedMedia
from callgate.media.pacer import SendTick
from callgate.media.ports import BoundPorts, PortPool
from callgate.media.session import Address, MediaSession

logger = logging.getLogger(__name__)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, handler: Callable[[bytes, Any, float], None]) -> None:
        self._handler = handler
        self.errors = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._handler(data, addr, time.monotonic())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the far end is not listening (yet). Count only.
        self.errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class MediaStream:
    """One call's media on the wire. Create with :meth:`open`, configure with :meth:`start`."""

    def __init__(self, bound: BoundPorts, port_pool: PortPool, tick: SendTick, *,
                 symmetric_rtp: bool, jitter_min_ms: int, jitter_max_ms: int,
                 media_timeout: float, call_id: str | None) -> None:
        self.local_port = bound.port
        self.local_rtcp_port = bound.port + 1
        self.call_id = call_id
        self.session = MediaSession(
            self._transmit, ipv6_socket=bound.rtp.family == socket.AF_INET6,
            symmetric_rtp=symmetric_rtp, jitter_min_ms=jitter_min_ms,
            jitter_max_ms=jitter_max_ms, media_timeout=media_timeout, call_id=call_id)
        self._bound = bound
        self._pool = port_pool
        self._tick = tick
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._endpoints: list[_Endpoint] = []
        self._resolve: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, *, bind_host: str, port_pool: PortPool, tick: SendTick,
                   symmetric_rtp: bool = True, jitter_min_ms: int = 40,
                   jitter_max_ms: int = 200, media_timeout: float = 0.0,
                   call_id: str | None = None) -> MediaStream:
        """Bind the RTP and RTCP sockets on a free even/odd port pair. ``media_timeout``:
        stop sending while the peer has sent nothing for that long (0: never stop)."""
        bound = port_pool.bind(bind_host)
        self = cls(bound, port_pool, tick, symmetric_rtp=symmetric_rtp,
                   jitter_min_ms=jitter_min_ms, jitter_max_ms=jitter_max_ms,
                   media_timeout=media_timeout, call_id=call_id)
        loop = asyncio.get_running_loop()
        try:
            rtp = _Endpoint(self.session.receive_rtp)
            self._rtp, _ = await loop.create_datagram_endpoint(lambda: rtp, sock=bound.rtp)
            self._endpoints.append(rtp)
            if bound.rtcp is not None:
                rtcp = _Endpoint(self.session.receive_rtcp)
                self._rtcp, _ = await loop.create_datagram_endpoint(lambda: rtcp,
                                                                    sock=bound.rtcp)
                self._endpoints.append(rtcp)
        except BaseException:
            await self.close()
            raise
        event(logger, "media.open", call_id=call_id, port=bound.port, host=bind_host)
        return self

    def start(self, negotiated: NegotiatedMedia, *, audio: AudioFormat,
              inline: bool = False) -> None:
        """Apply a negotiation; called again on re-INVITE to change codec, remote address,
        direction or keys in place (same sockets, SSRC and sequence numbers). ``audio`` and
        ``inline``: see :meth:`MediaSession.configure`."""
        if self._closed:
            raise RuntimeError("media stream is closed")
        if self.session.configure(negotiated, audio=audio, inline=inline, now=time.monotonic()):
            self._lookup(*negotiated.remote_addr)
        self._tick.register(self)
        event(logger, "media.start", call_id=self.call_id, codec=negotiated.codec.name,
              remote=f"{negotiated.remote_addr[0]}:{negotiated.remote_addr[1]}",
              direction=negotiated.direction, srtp=negotiated.local_crypto is not None,
              rtcp_mux=negotiated.rtcp_mux)

    def answered(self) -> None:
        """The call is established (ACK received, or early media asked for): from now on the
        SDP's address gets our media even before it sent any. Until then only a source that
        sent the call's media does, so an INVITE alone cannot aim a stream at a third party."""
        self.session.answered(time.monotonic())

    @property
    def last_heard(self) -> float | None:
        """``time.monotonic()`` of the peer's last RTP or RTCP (or of the answer)."""
        return self.session.last_heard

    def _lookup(self, host: str, port: int) -> None:
        if self._resolve is not None:
            self._resolve.cancel()
        family = self._bound.rtp.family

        async def resolve() -> None:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            except OSError as exc:
                event(logger, "media.remote_unresolved", level=logging.WARNING,
                      call_id=self.call_id, host=host, error=str(exc))
                return
            current = self.session.negotiated
            if current is not None and current.remote_addr[0] == host:  # not stale meanwhile
                self.session.set_remote(str(infos[0][4][0]))

        self._resolve = asyncio.get_running_loop().create_task(resolve())

    def send_due(self, now: float) -> None:
        self.session.send_due(now)

    def on_tick(self, now: float) -> None:
        self.session.receive_due(now)

    def _transmit(self, data: bytes, addr: Address, rtcp: bool) -> None:
        transport = self._rtcp if rtcp else self._rtp
        if transport is not None:
            transport.sendto(data, addr)

    # -- the call's audio ---------------------------------------------------------------------

    @property
    def audio_format(self) -> AudioFormat | None:
        return self.session.audio_format

    @property
    def on_audio(self) -> Callable[[bytes], None] | None:
        """Receives frames in ``audio_format``, 20 ms each, every tick (silence when the
        caller sends nothing, concealment on loss)."""
        return self.session.on_audio

    @on_audio.setter
    def on_audio(self, callback: Callable[[bytes], None] | None) -> None:
        self.session.on_audio = callback

    @property
    def on_dtmf(self) -> Callable[[str], None] | None:
        return self.session.on_dtmf

    @on_dtmf.setter
    def on_dtmf(self, callback: Callable[[str], None] | None) -> None:
        self.session.on_dtmf = callback

    def send_audio(self, pcm: bytes, *, flush: bool = False) -> None:
        """Queue audio in ``audio_format`` for paced output (silence is sent while it is empty).
        ``flush`` marks the end of an utterance: its last partial frame goes out padded."""
        if not self._closed:
            self.session.send_audio(pcm, flush=flush)

    def clear_output(self) -> int:
        """Drop queued output (barge-in); returns the milliseconds of audio dropped."""
        return self.session.clear_output()

    @property
    def queued_ms(self) -> int:
        """Milliseconds of audio waiting to be sent (cheap; ``stats`` builds a whole dict)."""
        return self.session.queued_ms

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send a key press as RFC 4733 telephone-events between the audio frames
        (ValueError for a bad digit, RuntimeError if telephone-event was not negotiated)."""
        self.session.send_dtmf(digit, duration_ms)

    @property
    def latched_addr(self) -> Address | None:
        return self.session.latched_addr

    @property
    def stats(self) -> dict[str, Any]:
        stats = self.session.stats
        stats["socket_errors"] = sum(ep.errors for ep in self._endpoints)
        return stats

    # -- teardown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop, say RTCP BYE, close both sockets and give the ports back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._tick.unregister(self)
        if self._resolve is not None:
            self._resolve.cancel()
        self.session.send_rtcp(time.monotonic(), bye=True)
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        if self._endpoints:
            await asyncio.wait([ep.closed for ep in self._endpoints], timeout=1.0)
        self._bound.close()  # a no-op for the sockets the transports already closed
        self._pool.release(self._bound.port)
        event(logger, "media.close", call_id=self.call_id, **self.stats)

    @property
    def closed(self) -> bool:
        return self._closed
