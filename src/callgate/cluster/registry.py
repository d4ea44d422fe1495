"""The call registry several callgate nodes share in Redis: which node owns which call.

Keys (all under ``callgate:``):

* ``nodes``            hash  node id -> base URL of its API
* ``alive:<node>``     string with a TTL, refreshed by the node's heartbeat
* ``call:<call id>``   hash  node, url, state and the metadata a lookup answers with; an
                             ended call's stays ``ENDED_TTL`` so replayed verbs still reach the
                             node that remembers it
* ``calls:<node>``     set   the live call ids a node owns, so they can go when the node does

A node whose heartbeat lapsed is dead: any living node's reaper deletes its calls and its
entry, so they leave the registry within about one TTL. Writes are queued and applied in order
by one task, off the call path: a slow or absent Redis never delays SIP or media, it only makes
this node's calls invisible to the others until Redis is back. Then the node writes its live
calls again, since writes made while Redis was away are lost (as is everything, if Redis
restarted empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from callgate.log import event

logger = logging.getLogger("callgate.cluster")

PREFIX = "callgate:"
ENDED_TTL = 3600  # seconds an ended call still routes to its node (which answers replays)
MAX_PENDING = 10_000  # writes queued while Redis is away; older state is worth little


class RegistryUnavailable(Exception):
    """Redis cannot be reached: cross-node lookups cannot be answered."""


@dataclass(frozen=True)
class Owner:
    node: str
    url: str
    state: str
    alive: bool


class CallRegistry:
    def __init__(self, url: str, node_id: str, node_url: str, *, ttl: float = 3.0,
                 op_timeout: float = 1.0) -> None:
        self.node_id = node_id
        self.node_url = node_url.rstrip("/")
        self.ttl = ttl
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout)
        self._writes: asyncio.Queue[tuple[str, str, dict[str, str]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.available = False
        self._live: dict[str, dict[str, str]] = {}  # what Redis should hold for our calls

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster; calls a previous run of this node left behind are dropped."""
        try:
            await self._forget_node(self.node_id)
            await self._beat()
        except (RedisError, OSError) as exc:
            event(logger, "cluster.redis_unavailable", logging.WARNING, node=self.node_id,
                  error=str(exc))
        self._tasks = [asyncio.create_task(self._heartbeat(), name="cluster heartbeat"),
                       asyncio.create_task(self._writer(), name="cluster writer")]
        event(logger, "cluster.joined", node=self.node_id, url=self.node_url, ttl=self.ttl)

    async def close(self) -> None:
        """Leave the cluster: queued writes are flushed, then this node's calls go."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._writes.join(), self.ttl)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._forget_node(self.node_id)
        await self.redis.aclose()

    # -- writes (from the call path: never block) -----------------------------------------

    def record(self, call_id: str, state: str, **meta: str) -> None:
        """This node owns ``call_id``, now in ``state``."""
        fields = self._live.setdefault(call_id, {"node": self.node_id, "url": self.node_url})
        fields.update(state=state, **meta)
        self._queue("set", call_id, dict(fields))

    def ended(self, call_id: str, state: str) -> None:
        """``call_id`` is over; its record lingers ``ENDED_TTL`` for replayed verbs."""
        self._live.pop(call_id, None)
        self._queue("end", call_id, {"state": state})

    def _queue(self, op: str, call_id: str, fields: dict[str, str]) -> None:
        if self._writes.qsize() >= MAX_PENDING:
            return  # Redis has been away a while; the heartbeat resync is what counts then
        self._writes.put_nowait((op, call_id, fields))

    async def _writer(self) -> None:
        while True:
            op, call_id, fields = await self._writes.get()
            try:
                await self._apply(op, call_id, fields)
            except (RedisError, OSError) as exc:
                self._mark(False, exc)
            finally:
                self._writes.task_done()

    async def _apply(self, op: str, call_id: str, fields: dict[str, str]) -> None:
        key, owned = f"{PREFIX}call:{call_id}", f"{PREFIX}calls:{self.node_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=cast(Any, fields))
            if op == "set":
                pipe.sadd(owned, call_id)
            else:
                pipe.expire(key, ENDED_TTL)
                pipe.srem(owned, call_id)
            await pipe.execute()

    # -- reads ----------------------------------------------------------------------------

    async def owner(self, call_id: str) -> Owner | None:
        """Who owns ``call_id``; None when no living node has it."""
        try:
            fields = cast(dict[str, str], await self.redis.hgetall(f"{PREFIX}call:{call_id}"))
            if not fields:
                return None
            alive = bool(await self.redis.exists(f"{PREFIX}alive:{fields['node']}"))
        except (RedisError, OSError) as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(str(exc)) from None
        return Owner(node=fields["node"], url=fields["url"], state=fields["state"], alive=alive)

    async def call(self, call_id: str) -> dict[str, str]:
        """The registry's record of ``call_id`` (empty when none)."""
        try:
            result = cast(dict[str, str], await self.redis.hgetall(f"{PREFIX}call:{call_id}"))
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(str(exc)) from None
        return result

    async def nodes(self) -> dict[str, str]:
        result = cast(dict[str, str], await self.redis.hgetall(f"{PREFIX}nodes"))
        return result

    # -- liveness -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._beat()
                await self._reap()
            except (RedisError, OSError) as exc:
                self._mark(False, exc)

    async def _beat(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{PREFIX}alive:{self.node_id}", str(time.time()),
                     px=max(1, int(self.ttl * 1000)))
            pipe.hset(f"{PREFIX}nodes", self.node_id, self.node_url)
            await pipe.execute()
        self._mark(True)

    async def _reap(self) -> None:
        """Delete the calls of nodes whose heartbeat lapsed (any living node may do it)."""
        for node in cast(list[str], await self.redis.hkeys(f"{PREFIX}nodes")):
            if node != self.node_id and not await self.redis.exists(f"{PREFIX}alive:{node}"):
                count = await self._forget_node(node)
                event(logger, "cluster.node_gone", logging.WARNING, node=node, calls=count)

    async def _forget_node(self, node: str) -> int:
        owned = f"{PREFIX}calls:{node}"
        calls = cast(set[str], await self.redis.smembers(owned))
        async with self.redis.pipeline(transaction=True) as pipe:
            for call_id in calls:
                pipe.delete(f"{PREFIX}call:{call_id}")
            pipe.delete(owned)
            pipe.hdel(f"{PREFIX}nodes", node)
            pipe.delete(f"{PREFIX}alive:{node}")
            await pipe.execute()
        return len(calls)

    def _mark(self, available: bool, error: Any = None) -> None:
        if available != self.available:
            self.available = available
            if available:
                for call_id, fields in self._live.items():
                    self._queue("set", call_id, dict(fields))
            event(logger, "cluster.redis_up" if available else "cluster.redis_down",
                  logging.INFO if available else logging.WARNING, node=self.node_id,
                  error=str(error) if error else None)
