"""The asyncio shell on real sockets (127.0.0.1 ephemeral ports): UDP, TCP, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from callgate.sip.endpoint import SipEndpoint
from callgate.sip.events import (
    AckTimeout,
    Addr,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
)
from callgate.sip.message import (
    Headers,
    Request,
    Response,
    make_response,
    parse_message,
    parse_uri,
)
from callgate.sip.transaction import TimerConfig
from callgate.sip.transport import SipTransportManager, StreamLimits

HOST = "127.0.0.1"


def options(branch: str = "z9hG4bKt1", transport: str = "UDP", call_id: str = "tc-1",
            method: str = "OPTIONS") -> bytes:
    return (
        f"{method} sip:proj@{HOST} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {HOST}:9;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@example.org>;tag=f1\r\nTo: <sip:proj@example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Tu:
    """A TU that answers every non-INVITE request with 200 and INVITE with ``invite_status``."""

    def __init__(self, invite_status: int = 200) -> None:
        self.events: list[Event] = []
        self.manager: SipTransportManager | None = None
        self.invite_status = invite_status
        self.changed = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        if isinstance(event, RequestReceived) and self.manager is not None:
            status = self.invite_status if event.request.method == "INVITE" else 200
            response = make_response(event.request, status, to_tag="uas")
            self.manager.send_response(event.tx_key, response)

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0) -> list[Event]:
        async def loop() -> list[Event]:
            while True:
                found = [e for e in self.events if isinstance(e, kind)]
                if len(found) >= count:
                    return found
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(loop(), timeout)


async def start(tu: Tu, *, timers: TimerConfig | None = None,
                endpoint: SipEndpoint | None = None, **kwargs: object) -> SipTransportManager:
    endpoint = endpoint or SipEndpoint(timers=timers)
    manager = SipTransportManager(endpoint, tu.on_event, **kwargs)  # type: ignore[arg-type]
    tu.manager = manager
    return manager


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Every socket test runs on stock asyncio and on uvloop (what ``callgate serve`` uses)."""
    kind = str(request.param)
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    return kind


def open_fds() -> int:
    # libuv keeps one spare descriptor on /dev/null per loop (for EMFILE): not ours.
    return sum(os.path.realpath(f"/proc/self/fd/{fd}") != "/dev/null"
               for fd in os.listdir("/proc/self/fd"))


def run(test: Callable[[], Awaitable[None]], loop_kind: str) -> None:
    """Run ``test`` in a fresh loop and check that it left no task and no socket behind."""

    async def main() -> None:
        before_tasks = len(asyncio.all_tasks())
        before_fds = open_fds()
        await test()
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before_tasks
        assert open_fds() == before_fds

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)


async def udp_client(family: int = socket.AF_INET, host: str = HOST
                     ) -> tuple[asyncio.DatagramTransport, UdpClient]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        UdpClient, local_addr=(host, 0), family=family)
    return transport, protocol


async def recv_response(queue: asyncio.Queue[bytes]) -> Response:
    message = parse_message(await asyncio.wait_for(queue.get(), 5))
    assert isinstance(message, Response)
    return message


async def read_message(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


# -- UDP ---------------------------------------------------------------------------------------


def test_udp_request_response(loop_kind: str) -> None:
    async def body() -> None:
        tu = Tu()
        manager = await start(tu)
        addr = await manager.listen_udp(HOST, 0)
        assert manager.endpoint.sent_by["udp"] == addr
        client, proto = await udp_client()
        client.sendto(options(), addr)
        response = await recv_response(proto.queue)
        assert response.status == 200
        assert response.vias[0].params["rport"] == str(client.get_extra_info("sockname")[1])
        client.close()
        await manager.close()

    run(body, loop_kind)


def test_udp_2xx_retransmitted_then_ack_timeout(loop_kind: str) -> None:
    async def body() -> None:
        tu = Tu()
        manager = await start(tu, timers=TimerConfig(t1=0.01, t2=0.04))
        addr = await manager.listen_udp(HOST, 0)
        client, proto = await udp_client()
        client.sendto(options(method="INVITE"), addr)
        statuses = [(await recv_response(proto.queue)).status for _ in range(4)]
        assert statuses == [100, 200, 200, 200]  # the one loop timer drives retransmission
        (timeout,) = await tu.wait_for(AckTimeout)
        assert isinstance(timeout, AckTimeout) and timeout.call_id == "tc-1"
        assert len(manager.endpoint.transactions) == 0
        client.close()
        await manager.close()

    run(body, loop_kind)


def test_udp_ipv6(loop_kind: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    async def body() -> None:
        tu = Tu()
        manager = await start(tu)
        try:
            addr = await manager.listen_udp("::1", 0)
        except OSError:
            await manager.close()
            pytest.skip("::1 not available")
        client, proto = await udp_client(socket.AF_INET6, "::1")
        client.sendto(options().replace(f"{HOST}:9".encode(), b"[::1]:9"), addr)
        assert (await recv_response(proto.queue)).status == 200
        (event,) = await tu.wait_for(RequestReceived)
        assert isinstance(event, RequestReceived) and event.addr[0] == "::1"
        client.close()
        await manager.close()

    run(body, loop_kind)


def test_exception_in_on_event_does_not_escape(loop_kind: str) -> None:
    async def body() -> None:
        calls: list[Event] = []

        def boom(event: Event) -> None:
            calls.append(event)
            raise RuntimeError("TU bug")

        manager = SipTransportManager(SipEndpoint(), boom)
        addr = await manager.listen_udp(HOST, 0)
        client, _ = await udp_client()
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        client.sendto(options(), addr)
        client.sendto(options(branch="z9hG4bKt2"), addr)
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        assert errors == []
        client.close()
        await manager.close()

    run(body, loop_kind)


# -- TCP ---------------------------------------------------------------------------------------


def test_tcp_message_split_across_segments_and_pipelined(loop_kind: str) -> None:
    async def body() -> None:
        tu = Tu()
        manager = await start(tu)
        addr = await manager.listen_tcp(HOST, 0)
        reader, writer = await asyncio.open_connection(*addr)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = options(transport="TCP")
        for piece in (data[:10], data[10:77], data[77:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # let each piece arrive as its own segment
        first = parse_message(await read_message(reader))
        assert isinstance(first, Response) and first.status == 200
        # Two messages in one segment, with a CRLF keep-alive between them.
        writer.write(options(branch="z9hG4bKt2", transport="TCP") + b"\r\n\r\n"
                     + options(branch="z9hG4bKt3", transport="TCP"))
        await writer.drain()
        branches = []
        for _ in range(2):
            message = parse_message(await read_message(reader))
            assert isinstance(message, Response)
            branches.append(message.vias[0].branch)
        assert branches == ["z9hG4bKt2", "z9hG4bKt3"]
        writer.write(b"\r\n\r\n")  # RFC 5626 keep-alive ping
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        assert manager.connection_count == 1
        writer.close()
        await writer.wait_closed()
        await manager.close()

    run(body, loop_kind)


def test_tcp_idle_connection_is_closed(loop_kind: str) -> None:
    async def body() -> None:
        manager = await start(Tu(), limits=StreamLimits(idle_timeout=0.1))
        addr = await manager.listen_tcp(HOST, 0)
        reader, writer = await asyncio.open_connection(*addr)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert manager.connection_count == 0
        writer.close()
        await writer.wait_closed()
        await manager.close()

    run(body, loop_kind)


def test_tcp_oversized_message_closes_connection(loop_kind: str) -> None:
    async def body() -> None:
        manager = await start(Tu(), max_message_size=1000)
        addr = await manager.listen_tcp(HOST, 0)
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nX-Pad: " + b"a" * 2000)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        await manager.close()

    run(body, loop_kind)


def out_request(target: Addr) -> Request:
    headers = Headers([
        ("From", "<sip:proj@example.com>;tag=uas"),
        ("To", "<sip:a@example.org>;tag=f1"),
        ("Call-ID", "out-1"),
        ("CSeq", "2 BYE"),
    ])
    return Request("BYE", parse_uri(f"sip:a@{target[0]}:{target[1]}"), headers)


class Peer:
    """A minimal stream peer: answers each request 200 on the same connection."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[Request] = asyncio.Queue()
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.addr: Addr = ("", 0)

    async def start(self, context: ssl.SSLContext | None = None) -> Peer:
        self.server = await asyncio.start_server(self.handle, HOST, 0, ssl=context)
        self.addr = self.server.sockets[0].getsockname()[:2]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*self.handlers), 5)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        got = self.got
        try:
            while True:
                message = parse_message(await read_message(reader))
                assert isinstance(message, Request)
                got.put_nowait(message)
                writer.write(make_response(message, 200, to_tag="f1").to_bytes())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


def test_tcp_outbound_request_opens_connection(loop_kind: str) -> None:
    async def body() -> None:
        tu = Tu()
        manager = await start(tu)
        await manager.listen_tcp(HOST, 0)
        peer = await Peer().start()
        key = manager.send_request(out_request(peer.addr), peer.addr, "tcp")
        request = await asyncio.wait_for(peer.got.get(), 5)
        assert request.method == "BYE" and request.vias[0].transport == "TCP"
        (event,) = await tu.wait_for(ResponseReceived)
        assert isinstance(event, ResponseReceived) and event.tx_key == key
        assert manager.connection_count == 1
        await manager.close()
        await peer.stop()

    run(body, loop_kind)


def test_tcp_connect_failure_is_a_transport_timeout(loop_kind: str) -> None:
    async def body() -> None:
        probe = socket.socket()
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        tu = Tu()
        manager = await start(tu)
        await manager.listen_tcp(HOST, 0)
        key = manager.send_request(out_request((HOST, port)), (HOST, port), "tcp")
        (event,) = await tu.wait_for(TransactionTimeout)
        assert event == TransactionTimeout(key, "BYE", "transport")
        assert len(manager.endpoint.transactions) == 0
        await manager.close()

    run(body, loop_kind)


# -- TLS ---------------------------------------------------------------------------------------


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=callgate",
         "-addext", f"subjectAltName=IP:{HOST}"],
        check=True, capture_output=True)
    return cert, key


def tls_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = make_cert(tmp)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def test_tls_inbound_and_outbound(tmp_path: Path, loop_kind: str) -> None:
    server_ctx, client_ctx = tls_contexts(tmp_path)

    async def body() -> None:
        tu = Tu()
        manager = await start(tu, tls_client_context=client_ctx)
        addr = await manager.listen_tls(HOST, 0, server_ctx)
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx)
        writer.write(options(transport="TLS"))
        await writer.drain()
        response = parse_message(await read_message(reader))
        assert isinstance(response, Response) and response.status == 200
        (event,) = await tu.wait_for(RequestReceived)
        assert isinstance(event, RequestReceived) and event.transport == "tls"
        # Outbound: a request to a TLS peer opens a verified TLS connection.
        peer = await Peer().start(server_ctx)
        manager.send_request(out_request(peer.addr), peer.addr, "tls")
        assert (await asyncio.wait_for(peer.got.get(), 5)).vias[0].transport == "TLS"
        await tu.wait_for(ResponseReceived)
        assert manager.connection_count == 2
        writer.close()
        await manager.close()
        await peer.stop()

    run(body, loop_kind)


def test_close_releases_everything_with_live_connections(loop_kind: str) -> None:
    async def body() -> None:
        manager = await start(Tu())
        udp = await manager.listen_udp(HOST, 0)
        tcp = await manager.listen_tcp(HOST, 0)
        assert udp[1] and tcp[1]
        conns = [await asyncio.open_connection(*tcp) for _ in range(3)]
        while manager.connection_count < 3:
            await asyncio.sleep(0.01)
        await manager.close()
        assert manager.connection_count == 0
        for reader, writer in conns:
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()

    run(body, loop_kind)


# -- what a few hosts can take ------------------------------------------------------------------


def test_connections_are_capped_per_source_and_in_all(loop_kind: str) -> None:
    async def body() -> None:
        manager = await start(Tu(), limits=StreamLimits(max_connections=5,
                                                        max_connections_per_source=3))
        addr = await manager.listen_tcp(HOST, 0)
        conns = [await asyncio.open_connection(*addr) for _ in range(3)]
        extra = await asyncio.open_connection(*addr)
        assert await asyncio.wait_for(extra[0].read(), 5) == b""  # the 4th from one host
        other = [await asyncio.open_connection(*addr, local_addr=("127.0.0.2", 0))
                 for _ in range(2)]  # another host still gets in...
        for _, writer in other:  # ...and is served
            writer.write(options(transport="TCP"))
        assert (await read_message(other[0][0])).startswith(b"SIP/2.0 200")
        third = await asyncio.open_connection(*addr, local_addr=("127.0.0.3", 0))
        assert await asyncio.wait_for(third[0].read(), 5) == b""  # the 6th in all
        assert manager.connection_count == 5
        for _, writer in [*conns, extra, *other, third]:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await manager.close()

    run(body, loop_kind)


def test_a_message_must_be_complete_soon_after_its_first_byte(loop_kind: str) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        manager = await start(Tu(), limits=StreamLimits(message_deadline=0.5))
        addr = await manager.listen_tcp(HOST, 0)
        # A byte every 100 ms keeps the connection busy, but never finishes a message.
        reader, writer = await asyncio.open_connection(*addr)
        started = loop.time()
        data = options(transport="TCP")
        for byte in data[:40]:
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.4 < loop.time() - started < 3.0
        # Silence after connecting is cut off as well; a finished message, then keep-alive
        # pings, is a healthy connection that stays open.
        silent, silent_writer = await asyncio.open_connection(*addr)
        talker, talker_writer = await asyncio.open_connection(*addr)
        talker_writer.write(options(transport="TCP", branch="z9hG4bKt2"))
        assert (await read_message(talker)).startswith(b"SIP/2.0 200")
        for _ in range(8):
            talker_writer.write(b"\r\n\r\n")
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(silent.read(), 5) == b""
        assert manager.connection_count == 1
        for w in (writer, silent_writer, talker_writer):
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await manager.close()

    run(body, loop_kind)


def test_running_out_of_descriptors_answers_503_and_refuses_connections(loop_kind: str) -> None:
    async def body() -> None:
        free = [1000]
        manager = await start(Tu(), descriptors=lambda: free[0])
        udp = await manager.listen_udp(HOST, 0)
        tcp = await manager.listen_tcp(HOST, udp[1])
        transport, client = await udp_client()
        free[0] = 10
        manager._fd_check_at = 0.0  # look again now rather than within the second
        transport.sendto(options(method="INVITE"), udp)
        response = await recv_response(client.queue)
        assert response.status == 503 and response.headers.get("Retry-After") == "10"
        reader, writer = await asyncio.open_connection(*tcp)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        free[0] = 1000
        manager._fd_check_at = 0.0
        transport.sendto(options(method="INVITE", branch="z9hG4bKt9", call_id="tc-9"), udp)
        assert (await recv_response(client.queue)).status == 100
        transport.close()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await manager.close()

    run(body, loop_kind)
