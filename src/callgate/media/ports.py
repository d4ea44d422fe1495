"""The RTP/RTCP port range: even ports for RTP, the odd one above each for RTCP.

RFC 3550 §11: RTP uses an even port and RTCP the next higher (odd) one; with rtcp-mux
(RFC 5761) only the RTP port is needed, but the pair is still reserved so a later offer without
mux (re-INVITE) finds its RTCP port free. Ports are picked at random from the free ones, so the
next call's port cannot be predicted from this one's (RFC 3550 §8.2 wants RTP unguessable; an
attacker who knows the port can race the caller's first packets). A released port rests in a
queue for a while before it is free again, so stray packets for the old call in flight do not
reach the next one. A port that another process already holds is skipped, not fatal.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import socket
from collections import deque
from dataclasses import dataclass

from callgate.log import event

logger = logging.getLogger(__name__)


class PortsExhausted(RuntimeError):
    """No free RTP port pair in the configured range (answer 503 / 488)."""


@dataclass(slots=True)
class BoundPorts:
    """Sockets bound for one media stream; ``rtcp`` is None when only RTP was asked for."""

    port: int
    rtp: socket.socket
    rtcp: socket.socket | None

    def close(self) -> None:
        self.rtp.close()
        if self.rtcp is not None:
            self.rtcp.close()


class PortPool:
    """Even RTP ports from ``[low, high]`` (inclusive), each with RTP+1 for RTCP."""

    def __init__(self, low: int, high: int) -> None:
        first = low + (low % 2)
        if not 0 < low <= high <= 65535 or first + 1 > high:
            raise ValueError(f"port range {low}-{high} holds no even/odd pair")
        self.low, self.high = low, high
        self._free: list[int] = list(range(first, high, 2))
        self._used: set[int] = set()
        self.size = len(self._free)
        # Released ports wait here, oldest first, until a quarter of the range has been
        # released after them.
        self._resting: deque[int] = deque()
        self._rest = self.size // 4

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return len(self._free) + len(self._resting)

    def allocate(self) -> int:
        """Reserve a random free even port without binding it (see :meth:`bind`)."""
        free = self._free
        if not free:
            if not self._resting:
                raise PortsExhausted(
                    f"all {self.size} RTP ports in {self.low}-{self.high} in use")
            free.append(self._resting.popleft())  # busy range: the longest-rested port
        index = secrets.randbelow(len(free))
        free[index], free[-1] = free[-1], free[index]
        port = free.pop()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a port back; it rests before reuse. Unknown ports are ignored."""
        if port in self._used:
            self._used.remove(port)
            self._resting.append(port)
            while len(self._resting) > self._rest:
                self._free.append(self._resting.popleft())

    def bind(self, host: str, *, rtcp: bool = True) -> BoundPorts:
        """Bind UDP sockets on a random free pair, skipping ports other processes hold.

        The sockets are non-blocking and ready for ``loop.create_datagram_endpoint(sock=...)``;
        release the port with :meth:`release` after closing them.
        """
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        busy: list[int] = []  # held until the search ends, so no port is tried twice
        try:
            while self.available:
                port = self.allocate()
                try:
                    rtp_sock = _bind_udp(family, host, port)
                except OSError as exc:
                    self._skip(port, exc, busy)
                    continue
                rtcp_sock = None
                if rtcp:
                    try:
                        rtcp_sock = _bind_udp(family, host, port + 1)
                    except OSError as exc:
                        rtp_sock.close()
                        self._skip(port, exc, busy)
                        continue
                return BoundPorts(port, rtp_sock, rtcp_sock)
        finally:
            for port in busy:
                self.release(port)
        raise PortsExhausted(f"no bindable RTP port pair in {self.low}-{self.high} on {host}")

    def _skip(self, port: int, exc: OSError, busy: list[int]) -> None:
        busy.append(port)
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise exc
        event(logger, "media.port_busy", level=logging.DEBUG, port=port, error=exc.strerror)


def _bind_udp(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # No SO_REUSEADDR: on Linux it would let two sockets share a UDP port, hiding a clash.
        if family == socket.AF_INET6 and ipaddress.ip_address(host).is_unspecified:
            # "::" takes IPv4 too (mapped addresses), so one stream can face either family.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
