"""An instantly-answering webhook receiver for the setup-rate benchmark.

For each ``realtime.call.incoming`` delivery it verifies the Standard Webhooks signature (as
the ``openai`` SDK's ``webhooks.unwrap`` does: HMAC-SHA256 over ``id.timestamp.body``), calls
``POST /v1/realtime/calls/{call_id}/accept`` on the gateway, and then answers the delivery 200
(the order OpenAI's guide shows). It is deliberately thin: raw HTTP/1.1 on asyncio streams with
keep-alive connections both ways, so the time it adds to INVITE -> 200 is a few hundred
microseconds rather than a web framework's and an SDK's milliseconds; what is left to measure
is the gateway. Run as ``python -m bench.webhook_receiver --port P --gateway URL --secret S
--stats FILE``; on SIGTERM it writes its counters to FILE as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import signal
from pathlib import Path
from urllib.parse import urlsplit

SECRET = "whsec_" + base64.b64encode(b"callgate-benchmark-webhook-secret!").decode()


class Counters:
    def __init__(self) -> None:
        self.deliveries = 0
        self.accepted = 0
        self.accept_failed = 0
        self.bad_signature = 0
        self.accept_statuses: dict[str, int] = {}


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 message with a Content-Length body: (start line, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    body = await reader.readexactly(length) if length else b""
    return lines[0], headers, body


class GatewayClient:
    """POSTs to the gateway over a pool of keep-alive connections."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes) -> int:
        while self._idle:  # a kept-alive connection the server may have closed meanwhile:
            reader, writer = self._idle.pop()  # retry on a fresh one, as HTTP clients do
            try:
                return await self._exchange(reader, writer, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                continue
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, path, body)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        path: str, body: bytes) -> int:
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(),
                                                        self.port, len(body), body))
        try:
            status_line, headers, _ = await _read_message(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return int(status_line.split()[1])


class Receiver:
    def __init__(self, gateway: str, secret: str, session: dict[str, object]) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.client = GatewayClient(gateway)
        self.session = json.dumps(session).encode()
        self.counters = Counters()

    def verified(self, headers: dict[bytes, bytes], body: bytes) -> bool:
        signed = headers.get(b"webhook-id", b"") + b"." + headers.get(b"webhook-timestamp",
                                                                      b"") + b"." + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest())
        return any(hmac.compare_digest(sig.partition(b",")[2], expected)
                   for sig in headers.get(b"webhook-signature", b"").split())

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                _, headers, body = await _read_message(reader)
                status = await self.handle(headers, body)
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def handle(self, headers: dict[bytes, bytes], body: bytes) -> int:
        self.counters.deliveries += 1
        if not self.verified(headers, body):
            self.counters.bad_signature += 1
            return 400
        event = json.loads(body)
        if event.get("type") != "realtime.call.incoming":
            return 200
        call_id = event["data"]["call_id"]
        try:
            status = await self.client.post(f"/v1/realtime/calls/{call_id}/accept",
                                            self.session)
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        if status == 200:
            self.counters.accepted += 1
        else:
            self.counters.accept_failed += 1
            key = str(status)
            self.counters.accept_statuses[key] = self.counters.accept_statuses.get(key, 0) + 1
        return 200


async def main(args: argparse.Namespace) -> None:
    receiver = Receiver(args.gateway, args.secret, {"type": "realtime", "model": args.model})
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    args.stats.write_text(json.dumps(vars(receiver.counters)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway", required=True, help="the gateway's HTTP base URL")
    parser.add_argument("--secret", default=SECRET)
    parser.add_argument("--model", default="echo")
    parser.add_argument("--stats", type=Path, required=True)
    arguments = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))
