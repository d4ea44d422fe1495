"""Any node answers for any call: an application on node A drives a call that lives on B.

Two ``callgate serve`` nodes share a real redis-server; the application uses only the
official ``openai`` SDK with node A's base URL. The caller is a scripted UAC on B.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from openai.types.realtime import RealtimeSessionCreateRequestParam
from websockets.exceptions import ConnectionClosed

from tests.cluster.nodes import API_KEY, Caller, nodes, owned
from tests.cluster.redis_proc import RedisServer, redis_server
from tests.e2e.harness import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=API_KEY, base_url=f"{gw.http}/v1",
                              websocket_base_url=f"ws://127.0.0.1:{gw.http_port}/v1",
                              max_retries=0)


async def _drive_remote_call(a: Gateway, b: Gateway, redis_url: str) -> None:
    caller = Caller(b, "fwd1")
    try:
        await caller.invite()
        [call_id] = owned(redis_url, "b")
        async with _client(a) as app, _client(b) as direct:
            await app.realtime.calls.accept(call_id, type="realtime", model="echo")
            await caller.answered()
            # Retried accepts, through A and straight at the owner, are the same one accept.
            await app.realtime.calls.accept(call_id, type="realtime", model="echo")
            await direct.realtime.calls.accept(call_id, type="realtime", model="echo")

            async with app.realtime.connect(call_id=call_id) as connection:
                session: RealtimeSessionCreateRequestParam = {
                    "type": "realtime", "instructions": "relayed through node a"}
                await connection.session.update(session=session)
                async with asyncio.timeout(10):
                    async for ev in connection:
                        if ev.type == "session.updated":
                            assert ev.session.instructions == "relayed through node a"
                            break

                await app.realtime.calls.refer(call_id, target_uri="tel:+15550100")
                refer = await caller.receive("REFER", timeout=10)
                await caller.send(caller.answer(refer, 202, "Accepted"))  # type: ignore[arg-type]

                await app.realtime.calls.hangup(call_id)
                await caller.hung_up()
                # The owner closes the session's socket normally; the relay passes it on.
                async with asyncio.timeout(10):
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await connection.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            assert await _registry_empty(redis_url, "b")
            await app.realtime.calls.hangup(call_id)  # over: hanging up again is fine
            with pytest.raises(openai.NotFoundError):
                await app.realtime.calls.accept("rtc_" + "0" * 32, type="realtime")
    finally:
        caller.close()


async def _registry_empty(redis_url: str, node: str) -> bool:
    async with asyncio.timeout(5):
        while owned(redis_url, node, timeout=0):
            await asyncio.sleep(0.05)
    return True


async def _redis_gone(a: Gateway, b: Gateway, stop_redis: Callable[[], None]) -> None:
    caller = Caller(b, "fwd2")
    try:
        await caller.invite()
        call_id = next(iter(b.events("call.incoming")[-1:]), "").split("call_id=")[1].split()[0]
        stop_redis()
        async with _client(a) as app, _client(b) as direct:
            with pytest.raises(openai.InternalServerError) as refused:
                await app.realtime.calls.accept(call_id, type="realtime", model="echo")
            assert refused.value.status_code == 503
            assert "cluster_unavailable" in str(refused.value.body)
            # The owner goes on serving its own call.
            await direct.realtime.calls.accept(call_id, type="realtime", model="echo")
            await caller.answered()
            await direct.realtime.calls.hangup(call_id)
            await caller.hung_up()
    finally:
        caller.close()


def test_application_on_one_node_drives_calls_on_another(tmp_path: Path) -> None:
    with redis_server() as redis_url, nodes(tmp_path, redis_url, ["a", "b"]) as gws:
        asyncio.run(_drive_remote_call(gws["a"], gws["b"], redis_url))
        assert gws["b"].events("cluster.joined") and gws["a"].events("cluster.joined")
        assert len(gws["a"].events("cluster.ws_relayed")) == 1
        assert not gws["a"].events("call.incoming")  # the call never touched node a


def test_without_redis_own_calls_go_on_and_cross_node_requests_get_503(
        tmp_path: Path) -> None:
    with RedisServer() as server, nodes(tmp_path, server.url, ["a", "b"]) as gws:
        asyncio.run(_redis_gone(gws["a"], gws["b"], server.stop))
