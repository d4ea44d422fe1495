"""Drain: the node answers OPTIONS and new INVITEs 503, keeps its calls up to drain_timeout,
then the rest get BYE."""

from __future__ import annotations

import asyncio
import time

import pytest

from callgate.sip.message import Response
from tests.cluster.nodes import Caller
from tests.e2e.harness import Gateway, in_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def _options(caller: Caller, n: int) -> int:
    await caller.send(caller.request("OPTIONS", caller.uri, n, f"opt{n}", to=caller.to))
    answer = await caller.receive("SIP/2.0")
    assert isinstance(answer, Response)
    return answer.status


async def _drain() -> float:
    async with in_process(rtp_ports=10, drain_timeout=1.0) as gw:
        assert gw.calls is not None
        port = gw.sip_addresses["udp"][1]
        front = Gateway(port, 0, None, None)  # type: ignore[arg-type]
        up, late, probe = Caller(front, "up"), Caller(front, "late"), Caller(front, "probe")
        try:
            assert await _options(probe, 1) == 200
            await up.invite()
            await up.answered()
            drain = asyncio.create_task(gw.drain())
            await asyncio.sleep(0.05)
            assert await _options(probe, 2) == 503
            await late.send(late.request("INVITE", late.uri, 1, "lateinv", to=late.to,
                                         body=""))
            refused = await late.receive(" 503 ")
            assert isinstance(refused, Response)
            assert gw.calls.active_count == 1  # the call in progress goes on
            started = time.monotonic()
            await asyncio.wait_for(drain, 5)
            waited = time.monotonic() - started
            await gw.stop()
            await up.hung_up()
            return waited
        finally:
            for caller in (up, late, probe):
                caller.close()


def test_drain_refuses_new_calls_and_ends_the_rest_after_the_timeout() -> None:
    waited = asyncio.run(_drain())
    assert 0.5 < waited < 3
