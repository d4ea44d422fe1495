"""Thin asyncio shell around :class:`callgate.sip.endpoint.SipEndpoint`: UDP, TCP and TLS.

Every received message is fed to the endpoint with ``loop.time()`` as ``now``; then the
endpoint's events go to the TU's ``on_event`` callback, its datagrams go out, and ONE loop timer
is re-armed at ``endpoint.get_timer()`` (the aioquic pattern, see STYLE.md). Streams are framed
by Content-Length (:class:`callgate.sip.message.StreamFramer`). Connections are kept in a table
keyed by ``(transport, peer address)`` so responses go back on the connection the request came
in on (RFC 3261 §18.2.2) and requests to a peer reuse it or open one.

Addresses handed to the shell must be IP literals: name resolution (RFC 3263) is the TU's job,
so nothing here ever blocks on DNS. No exception escapes to the event loop.

What a few hosts can take from it is bounded (:class:`StreamLimits`): connections per source
address and in all; a message must be complete within ``message_deadline`` of its first byte
(and a connection we accepted must deliver its first message that soon), so a byte every few
seconds holds nothing open; and while file descriptors run short the endpoint answers new
INVITEs 503 with Retry-After and new connections are refused, rather than calls failing
half-way when a socket cannot be had.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from callgate.log import event as log_event
from callgate.sip.endpoint import SipEndpoint
from callgate.sip.events import Addr, Event, TxKey
from callgate.sip.message import Request, Response, SipParseError, StreamFramer

logger = logging.getLogger(__name__)

# The kernel's default UDP receive queue (~200 KiB) holds about a hundred small datagrams; a
# loop that stalls for a moment at 100+ calls/s overflows it, and every ACK or BYE lost there
# comes back as a retransmission storm. Ask for more: SO_RCVBUFFORCE where the process may
# (CAP_NET_ADMIN, e.g. root in a container), else SO_RCVBUF, which net.core.rmem_max caps.
UDP_RECEIVE_BUFFER = 8 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; absent from some builds

EventCallback = Callable[[Event], None]

# How often the descriptor count is looked at (a /proc listing), and how many must stay free
# for the RTP sockets, webhook and API connections of calls being set up.
FD_CHECK_INTERVAL = 1.0
FD_RESERVE = 64


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds on TCP/TLS connections (see the module docstring)."""

    max_connections: int = 4096
    max_connections_per_source: int = 64
    idle_timeout: float = 300.0
    message_deadline: float = 10.0


def descriptors_free() -> int:
    """File descriptors this process may still open (soft RLIMIT_NOFILE minus open ones)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        return soft  # no /proc: nothing to go by
    return soft - used


def _addr(raw: tuple[object, ...]) -> Addr:
    # IPv6 sockets report (host, port, flowinfo, scope_id); the core only wants (host, port).
    return (str(raw[0]), int(str(raw[1])))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, manager: SipTransportManager) -> None:
        self.manager = manager
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, so no isinstance check here.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.manager._feed(data, _addr(addr), "udp")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable ...) surface here; UDP transactions retransmit anyway.
        log_event(logger, "sip.udp_error", logging.DEBUG, error=repr(exc))


class _StreamProtocol(asyncio.Protocol):
    """One TCP or TLS connection: framing, an idle timeout and a bounded write buffer."""

    def __init__(self, manager: SipTransportManager, transport_name: str,
                 peer: Addr | None = None) -> None:
        self.manager = manager
        self.name = transport_name
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer(manager.max_message_size)
        self.closed: asyncio.Future[None] = manager.loop.create_future()
        self._last_activity = manager.loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.inbound = peer is None
        self.spoke = not self.inbound  # a connection we opened owes us nothing
        self.registered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            self.peer = _addr(transport.get_extra_info("peername"))
        if not self.manager._register(self):
            self.transport.abort()
            return
        self._arm_idle()
        self._watch_deadline()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.manager.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            # No way to resynchronise a stream after a framing error (§18.3): drop the connection.
            log_event(logger, "sip.stream_error", logging.INFO, transport=self.name,
                      peer=self._peer_text(), reason=exc.reason)
            self.abort()
            return
        pings = self.framer.take_pings()
        if pings:
            self.write(b"\r\n" * pings)  # RFC 5626 §4.4.1: a CRLF "pong" for each ping
        if messages:
            self.spoke = True
            if self._deadline is not None:  # a new clock for the next message, if begun
                self._deadline.cancel()
                self._deadline = None
        self._watch_deadline()
        for message in messages:
            if self.peer is not None:
                self.manager._feed(message, self.peer, self.name)

    def _watch_deadline(self) -> None:
        """The first byte of a message starts its clock; so does accepting a connection,
        since whoever connects to us has something to say (keep-alive CRLFs do not count)."""
        waiting = self.framer.pending > 0 or not self.spoke
        if not waiting and self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        elif waiting and self._deadline is None:
            loop = self.manager.loop
            self._deadline = loop.call_at(loop.time() + self.manager.limits.message_deadline,
                                          self._missed_deadline)

    def _missed_deadline(self) -> None:
        self._deadline = None
        log_event(logger, "sip.message_deadline", logging.INFO, transport=self.name,
                  peer=self._peer_text(), pending=self.framer.pending,
                  seconds=self.manager.limits.message_deadline)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._idle, self._deadline):
            if handle is not None:
                handle.cancel()
        self._idle = self._deadline = None
        self.manager._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(data) > self.manager.max_write_buffer:
            log_event(logger, "sip.stream_backlog", logging.WARNING, transport=self.name,
                      peer=self._peer_text())
            self.abort()
            return
        self._last_activity = self.manager.loop.time()
        transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _arm_idle(self) -> None:
        deadline = self._last_activity + self.manager.limits.idle_timeout
        self._idle = self.manager.loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self.manager.loop.time() - self._last_activity >= self.manager.limits.idle_timeout:
            log_event(logger, "sip.connection_idle", logging.DEBUG, transport=self.name,
                      peer=self._peer_text())
            self.abort()
        else:
            self._arm_idle()

    def _peer_text(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "?"


class SipTransportManager:
    """Owns the sockets, feeds the endpoint, delivers its events to ``on_event``.

    ``public_host`` is the address peers reach us at; it goes, with each bound port, into
    ``endpoint.sent_by`` (the Via of our requests) unless the TU set one there already.

    Use: ``await listen_udp/listen_tcp/listen_tls(...)``, then answer and originate through
    ``send_response``/``send_request``/``send_ack`` (which stamp ``now`` and flush at once),
    and ``await close()`` at the end. ``on_event`` is called synchronously and may call back
    into these methods; an exception it raises is logged and swallowed. Construct it inside the
    running loop (it binds to ``asyncio.get_running_loop()``).
    """

    def __init__(self, endpoint: SipEndpoint, on_event: EventCallback, *,
                 limits: StreamLimits | None = None, max_message_size: int = 65535,
                 max_write_buffer: int = 1 << 20,
                 tls_client_context: ssl.SSLContext | None = None,
                 public_host: str | None = None,
                 descriptors: Callable[[], int] = descriptors_free) -> None:
        self.endpoint = endpoint
        self.public_host = public_host
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.limits = limits or StreamLimits()
        self.max_message_size = max_message_size
        self.max_write_buffer = max_write_buffer
        self.tls_client_context = tls_client_context
        self._descriptors = descriptors
        self._per_source: Counter[str] = Counter()
        self._fd_check_at = 0.0
        self.local_addresses: dict[str, list[Addr]] = {}
        self._udp: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._connections: dict[tuple[str, Addr], _StreamProtocol] = {}
        self._connecting: dict[tuple[str, Addr], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._closed = False

    # -- listening -----------------------------------------------------------------------------

    async def listen_udp(self, host: str, port: int) -> Addr:
        """Bind a UDP socket; returns the bound address (port 0 picks one)."""
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                            flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
            except OSError:  # not privileged: the plain option, up to rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            sock.setblocking(False)
            sock.bind(address)
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._udp.append(transport)
        return self._bound("udp", sock.getsockname(),
                           receive_buffer=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    async def listen_tcp(self, host: str, port: int) -> Addr:
        """Listen for TCP connections; returns the bound address."""
        return await self._listen("tcp", host, port, None)

    async def listen_tls(self, host: str, port: int, context: ssl.SSLContext) -> Addr:
        """Listen for TLS connections (RFC 3261 §26.2) with a server-side ``context``."""
        return await self._listen("tls", host, port, context)

    async def _listen(self, name: str, host: str, port: int,
                      context: ssl.SSLContext | None) -> Addr:
        server = await self.loop.create_server(
            lambda: _StreamProtocol(self, name), host, port, ssl=context, reuse_address=True)
        self._servers.append(server)
        return self._bound(name, server.sockets[0].getsockname())

    def _bound(self, name: str, sockname: tuple[object, ...], **fields: Any) -> Addr:
        addr = _addr(sockname)
        self.local_addresses.setdefault(name, []).append(addr)
        # The Via sent-by of our requests: the public host if given, else the bound address
        # unless it is a wildcard (0.0.0.0 / ::), which would be useless to a peer.
        host = self.public_host or addr[0]
        if host not in ("0.0.0.0", "::"):
            self.endpoint.sent_by.setdefault(name, (host, addr[1]))
        log_event(logger, "sip.listening", transport=name, addr=f"{addr[0]}:{addr[1]}", **fields)
        return addr

    # -- the TU's verbs ------------------------------------------------------------------------

    def send_response(self, tx_key: TxKey, response: Response) -> bool:
        """``SipEndpoint.send_response`` with ``now`` = loop time; flushes at once."""
        sent = self.endpoint.send_response(tx_key, response, self.loop.time())
        self._pump()
        return sent

    def send_request(self, request: Request, addr: Addr, transport: str) -> TxKey:
        """``SipEndpoint.send_request``; opens a TCP/TLS connection to ``addr`` if needed."""
        key = self.endpoint.send_request(request, addr, transport, self.loop.time())
        self._pump()
        return key

    def send_ack(self, ack: Request, addr: Addr, transport: str) -> None:
        self.endpoint.send_ack(ack, addr, transport, self.loop.time())
        self._pump()

    def send_keepalive(self, addr: Addr, transport: str) -> None:
        """A CRLF keep-alive (RFC 5626 §3.5.1) on the TCP/TLS connection to ``addr``."""
        self._transmit(b"\r\n\r\n", addr, transport)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- the core loop -------------------------------------------------------------------------

    def _check_descriptors(self) -> bool:
        """True while descriptors are plentiful; tells the endpoint when they are not. Looked
        at once a second at most, when something arrives."""
        now = self.loop.time()
        if now >= self._fd_check_at:
            self._fd_check_at = now + FD_CHECK_INTERVAL
            free = self._descriptors()
            short = free < FD_RESERVE
            if short != (self.endpoint.overloaded is not None):
                log_event(logger, "sip.descriptors_short" if short else "sip.descriptors_ok",
                          logging.WARNING if short else logging.INFO, free=free)
            self.endpoint.overloaded = "file descriptors running out" if short else None
        return self.endpoint.overloaded is None

    def _feed(self, data: bytes, addr: Addr, transport: str) -> None:
        self._check_descriptors()
        try:
            self.endpoint.receive(data, addr, transport, self.loop.time())
        except Exception as exc:  # a bug must not take the listener down
            log_event(logger, "sip.receive_failed", logging.ERROR, peer=f"{addr[0]}:{addr[1]}",
                      transport=transport, error=repr(exc))
        self._pump()

    def _pump(self) -> None:
        """Deliver events, flush datagrams and re-arm the timer; safe to re-enter."""
        if self._pumping or self._closed:
            return
        self._pumping = True
        try:
            while True:
                event = self.endpoint.next_event()
                if event is not None:
                    try:
                        self.on_event(event)
                    except Exception as exc:
                        log_event(logger, "sip.on_event_failed", logging.ERROR,
                                  event_type=type(event).__name__, error=repr(exc))
                    continue
                # Flushing can queue new events (a transport error): loop until both are empty.
                datagrams = self.endpoint.datagrams_to_send()
                if not datagrams:
                    break
                for data, addr, transport in datagrams:
                    self._transmit(data, addr, transport)
        finally:
            self._pumping = False
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.endpoint.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.endpoint.handle_timer(self.loop.time())
        except Exception as exc:
            log_event(logger, "sip.timer_failed", logging.ERROR, error=repr(exc))
        self._pump()

    def _transmit(self, data: bytes, addr: Addr, transport: str) -> None:
        if not is_ip(addr[0]):
            log_event(logger, "sip.unresolved_destination", logging.WARNING, host=addr[0])
            self.endpoint.transport_error(addr, transport, self.loop.time())
            return
        if transport == "udp":
            self._send_udp(data, addr)
            return
        key = (transport, addr)
        conn = self._connections.get(key)
        if conn is not None:
            conn.write(data)
        elif key in self._connecting:
            self._connecting[key].append(data)
        elif transport in ("tcp", "tls"):
            self._connecting[key] = [data]
            task = self.loop.create_task(self._connect(transport, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            log_event(logger, "sip.unknown_transport", logging.WARNING, transport=transport)

    def _send_udp(self, data: bytes, addr: Addr) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        for transport in self._udp:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == family and not transport.is_closing():
                transport.sendto(data, addr)
                return
        log_event(logger, "sip.no_udp_socket", logging.WARNING, peer=f"{addr[0]}:{addr[1]}")
        self.endpoint.transport_error(addr, "udp", self.loop.time())

    async def _connect(self, transport: str, addr: Addr) -> None:
        key = (transport, addr)
        context: ssl.SSLContext | None = None
        if transport == "tls":
            context = self.tls_client_context or ssl.create_default_context()
        try:
            await self.loop.create_connection(
                lambda: _StreamProtocol(self, transport, addr), addr[0], addr[1], ssl=context)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._connecting.pop(key, None)
            log_event(logger, "sip.connect_failed", logging.INFO, transport=transport,
                      peer=f"{addr[0]}:{addr[1]}", error=repr(exc))
            self.endpoint.transport_error(addr, transport, self.loop.time())
            self._pump()
            return
        # _register (from connection_made) has already flushed what was queued.

    def _register(self, conn: _StreamProtocol) -> bool:
        if self._closed or conn.peer is None:
            return False
        source = conn.peer[0]
        limits = self.limits
        if conn.inbound:
            refusal = None
            if len(self._connections) >= limits.max_connections:
                refusal = "connections"
            elif self._per_source[source] >= limits.max_connections_per_source:
                refusal = "connections_per_source"
            elif not self._check_descriptors():
                refusal = "descriptors"
            if refusal is not None:
                log_event(logger, "sip.connection_refused", logging.WARNING, transport=conn.name,
                          peer=f"{source}:{conn.peer[1]}", limit=refusal)
                return False
        key = (conn.name, conn.peer)
        self._connections[key] = conn
        self._per_source[source] += 1
        conn.registered = True
        for data in self._connecting.pop(key, []):
            conn.write(data)
        return True

    def _unregister(self, conn: _StreamProtocol) -> None:
        if conn.peer is None or not conn.registered:
            return
        conn.registered = False
        if self._connections.get((conn.name, conn.peer)) is conn:
            del self._connections[(conn.name, conn.peer)]
        source = conn.peer[0]
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every socket and connection and cancel every task and timer this shell owns."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            server.close()
        conns = list(self._connections.values())
        for conn in conns:
            conn.abort()
        for transport in self._udp:
            transport.close()
        for server in self._servers:
            await server.wait_closed()
        if conns:
            await asyncio.wait([conn.closed for conn in conns], timeout=5)
        self._servers.clear()
        self._udp.clear()
        self._connecting.clear()
        # Give the loop a turn so the closed sockets' connection_lost callbacks run.
        await asyncio.sleep(0)
