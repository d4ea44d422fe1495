"""What one client can cost the Realtime WebSocket: sockets per call and per client, and how
deeply a frame may nest. Real uvicorn on loopback, raw websockets clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import websockets

from tests.realtime.doubles import ScriptedEngine
from tests.realtime.test_rt_websocket import API_KEY, CALL_ID, gateway, until

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def refused_with(url: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, additional_headers=AUTH):
            pass
    body = json.loads(info.value.response.body or b"{}")
    assert body["error"]["code"] == "too_many_connections"
    return info.value.response.status_code


async def test_a_frame_nested_thousands_deep_gets_an_error_event() -> None:
    async with gateway() as gw:
        await gw.call(ScriptedEngine())
        async with gw.client().realtime.connect(call_id=CALL_ID) as conn:
            await until(conn, "session.created")
            deep = '{"type":"session.update","session":' + "[" * 3000 + "]" * 3000 + "}"
            await conn.send_raw(deep)
            error, _ = await until(conn, "error")
            assert error["error"]["code"] == "invalid_json"
            assert "deeper than 64" in error["error"]["message"]
            # Brackets inside strings are text, not nesting; and the socket is still up.
            await conn.session.update(session={"type": "realtime",
                                               "instructions": "[" * 500 + "{" * 500})
            updated, _ = await until(conn, "session.updated")
            assert updated["session"]["instructions"].startswith("[[[")


async def test_the_seventeenth_socket_on_a_call_and_the_301st_from_a_client_are_refused(
        ) -> None:
    async with gateway() as gw, contextlib.AsyncExitStack() as stack:
        url = f"ws://127.0.0.1:{gw.port}/v1/realtime"

        async def open_on(call_id: str) -> Any:
            ws = await stack.enter_async_context(websockets.connect(
                f"{url}?call_id={call_id}", additional_headers=AUTH))
            assert json.loads(await ws.recv())["type"] == "session.created"
            return ws

        calls = [f"rtc_limit_{n}" for n in range(19)]
        for call_id in calls:
            await gw.call(ScriptedEngine(), call_id=call_id)
        first = [await open_on(calls[0]) for _ in range(16)]
        assert await refused_with(f"{url}?call_id={calls[0]}") == 429
        await first[0].close()  # a socket closed makes room again
        for _ in range(50):
            with contextlib.suppress(websockets.InvalidStatus):
                await open_on(calls[0])
                break
            await asyncio.sleep(0.02)
        opened = 16
        for call_id in calls[1:]:
            for _ in range(min(16, 300 - opened)):
                await open_on(call_id)
                opened += 1
        assert opened == 300  # the last call has room: only the client's cap is left
        assert await refused_with(f"{url}?call_id={calls[-1]}") == 429
