"""Callgate nodes sharing one Redis, as subprocesses on loopback, and a caller for them."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from bench.common import free_port

from tests.e2e.harness import PROJECT_ID, SDP, Gateway, ScriptedUac, callgate

API_KEY = "sk-callgate-cluster"


@contextlib.contextmanager
def nodes(tmp_path: Path, redis_url: str, names: list[str], **settings: str) -> Iterator[
        dict[str, Gateway]]:
    """One ringing-until-accepted node per name: the webhook goes nowhere, so calls wait for
    the application's accept (``accept_timeout`` 30 s)."""
    nowhere = free_port(socket.SOCK_STREAM, both=False)
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(callgate(
            tmp_path, redis_url=redis_url, node_id=name, node_ttl="1",
            webhook_url=f"http://127.0.0.1:{nowhere}/hook", accept_timeout="30",
            api_key=API_KEY, default_model="echo", **settings)) for name in names}


def owned(redis_url: str, node: str, timeout: float = 10.0, count: int = 1) -> list[str]:
    """The call ids the registry has for ``node``, once there are ``count`` of them."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            calls = sorted(client.smembers(f"callgate:calls:{node}"))  # type: ignore[arg-type]
            if len(calls) >= count or time.monotonic() > deadline:
                return calls
            time.sleep(0.05)
    finally:
        client.close()


class Caller(ScriptedUac):
    """A scripted caller whose Call-ID is its own, so several can call the same node."""

    def __init__(self, gateway: Gateway, name: str) -> None:
        super().__init__(("127.0.0.1", gateway.sip_port))
        self.name = name
        self.uri = f"sip:{PROJECT_ID}@127.0.0.1:{gateway.sip_port}"
        self.to = f"<{self.uri}>"

    def request(self, method: str, uri: str, cseq: int, branch: str, *, to: str,
                body: str = "", extra: str = "") -> bytes:
        data = super().request(method, uri, cseq, branch, to=to, body=body, extra=extra)
        return data.replace(b"glare-1@", f"{self.name}@".encode())

    async def invite(self) -> None:
        await self.send(self.request("INVITE", self.uri, 1, f"{self.name}inv", to=self.to,
                                     body=SDP.format(port=self.rtp_port)))
        await self.receive(" 180 ")

    async def answered(self) -> None:
        ok = await self.receive(" 200 ", timeout=10)
        self.to = ok.headers.get("To") or self.to
        await self.send(self.request("ACK", self.uri, 1, f"{self.name}ack", to=self.to))

    async def hung_up(self) -> None:
        bye = await self.receive("BYE", timeout=10)
        await self.send(self.answer(bye, 200, "OK"))  # type: ignore[arg-type]

    def close(self) -> None:
        self.sock.close()


