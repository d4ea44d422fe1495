"""The call registry against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from callgate.cluster.registry import CallRegistry, RegistryUnavailable


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def flushed(registry: CallRegistry) -> None:
    async with asyncio.timeout(5):
        await registry._writes.join()


def test_records_owner_and_state(redis_url: str) -> None:
    async def main() -> None:
        a = CallRegistry(redis_url, "a", "http://127.0.0.1:1", ttl=1.0)
        b = CallRegistry(redis_url, "b", "http://127.0.0.1:2", ttl=1.0)
        await a.start()
        await b.start()
        try:
            a.record("rtc_1", "ringing", sip_call_id="x@y")
            a.record("rtc_1", "accepted")
            await flushed(a)
            owner = await b.owner("rtc_1")
            assert owner is not None
            assert (owner.node, owner.url, owner.state, owner.alive) == (
                "a", "http://127.0.0.1:1", "accepted", True)
            assert (await b.call("rtc_1"))["sip_call_id"] == "x@y"
            assert await b.nodes() == {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"}
            a.ended("rtc_1", "ended")
            await flushed(a)
            # Still routed to a, which answers replays; gone from a's live calls, and expiring.
            owner = await b.owner("rtc_1")
            assert owner is not None and owner.state == "ended"
            assert await b.redis.smembers("callgate:calls:a") == set()
            assert 0 < await b.redis.ttl("callgate:call:rtc_1") <= 3600
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_dead_node_calls_leave_within_ttl(redis_url: str) -> None:
    async def main() -> None:
        a = CallRegistry(redis_url, "a", "http://127.0.0.1:1", ttl=0.6)
        b = CallRegistry(redis_url, "b", "http://127.0.0.1:2", ttl=0.6)
        await a.start()
        await b.start()
        try:
            for n in range(5):
                a.record(f"rtc_{n}", "accepted")
            await flushed(a)
            # a dies without a word: its heartbeat stops, nothing is deleted by a itself.
            for task in a._tasks:
                task.cancel()
            started = asyncio.get_running_loop().time()

            async def gone() -> bool:
                return all([await b.owner(f"rtc_{n}") is None for n in range(5)])

            await until(gone, timeout=5)
            assert asyncio.get_running_loop().time() - started < 3 * 0.6 + 1
            assert "a" not in await b.nodes()
        finally:
            await a.redis.aclose()
            await b.close()

    asyncio.run(main())


def test_owner_seen_dead_before_reaping(redis_url: str) -> None:
    async def main() -> None:
        a = CallRegistry(redis_url, "a", "http://127.0.0.1:1", ttl=30)
        await a.start()
        try:
            a.record("rtc_1", "accepted")
            await flushed(a)
            await a.redis.delete("callgate:alive:a")
            owner = await a.owner("rtc_1")
            assert owner is not None and not owner.alive
        finally:
            await a.close()

    asyncio.run(main())


def test_restart_forgets_previous_calls(redis_url: str) -> None:
    async def main() -> None:
        a = CallRegistry(redis_url, "a", "http://127.0.0.1:1", ttl=5)
        await a.start()
        a.record("rtc_old", "accepted")
        await flushed(a)
        for task in a._tasks:
            task.cancel()
        await a.redis.aclose()
        again = CallRegistry(redis_url, "a", "http://127.0.0.1:1", ttl=5)
        await again.start()
        try:
            assert await again.owner("rtc_old") is None
        finally:
            await again.close()

    asyncio.run(main())


def test_redis_gone_lookups_raise_writes_do_not_block() -> None:
    from tests.cluster.redis_proc import free_port

    async def main() -> None:
        a = CallRegistry(f"redis://127.0.0.1:{free_port()}/0", "a", "http://127.0.0.1:1",
                         ttl=1, op_timeout=0.5)
        await a.start()
        try:
            a.record("rtc_1", "ringing")  # returns at once; the write fails in the background
            with pytest.raises(RegistryUnavailable):
                await a.owner("rtc_1")
            await flushed(a)
            assert not a.available
        finally:
            await a.close()

    asyncio.run(main())


def test_calls_are_written_again_when_redis_comes_back() -> None:
    from tests.cluster.redis_proc import RedisServer

    first = RedisServer()

    async def main() -> None:
        a = CallRegistry(first.url, "a", "http://127.0.0.1:1", ttl=0.6, op_timeout=0.3)
        await a.start()
        try:
            a.record("rtc_before", "accepted")
            await flushed(a)
            first.stop()
            a.record("rtc_during", "ringing", sip_call_id="d@x")
            a.record("rtc_gone", "ringing")
            a.ended("rtc_gone", "cancelled")
            await flushed(a)
            assert not a.available
            with RedisServer(first.port):  # back, and empty

                async def both() -> bool:
                    with contextlib.suppress(RegistryUnavailable):
                        return (await a.owner("rtc_before") is not None
                                and await a.owner("rtc_during") is not None)
                    return False

                await until(both, timeout=5)
                assert (await a.call("rtc_during"))["sip_call_id"] == "d@x"
                assert await a.owner("rtc_gone") is None
        finally:
            await a.close()

    try:
        asyncio.run(main())
    finally:
        first.stop()
