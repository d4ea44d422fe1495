"""Call records in a database: SQLite in the data folder by default, PostgreSQL by URL.

Writes never hold up a call. :meth:`RecordStore.save` only puts the record on a bounded
queue; one writer task upserts what has queued, in batches. When the database is down or the
disk is full the batch is logged and counted (``callgate_records_dropped_total``) and the
writer goes on with the next; when the queue is full the newest record is dropped the same
way. The schema is migrated (Alembic, ``migrations/``) when the store opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from callgate.log import event
from callgate.observe.schema import calls

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
BATCH = 200
# How long the writer lets records gather after the first one: a call saves its record about
# five times in its first second, so a batch every 200 ms writes each state once and commits
# once for a few hundred calls, where writing each record as it came took a transaction (and
# its fsync) per record.
GATHER_S = 0.2


def database_url(url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL with its asyncio driver: aiosqlite for SQLite (the default, a file
    in ``data_dir``), asyncpg for PostgreSQL."""
    if not url:
        return f"sqlite+aiosqlite:///{data_dir / 'callgate.db'}"
    for plain, driver in (("postgresql://", "postgresql+asyncpg://"),
                          ("postgres://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


def migrate(connection: Connection, revision: str = "head") -> None:
    """Bring the schema to ``revision``, the newest by default (from an empty database too)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


class DatabaseUnavailable(RuntimeError):
    pass


class RecordStore:
    def __init__(self, url: str, *, queue_size: int = 10000,
                 on_dropped: Callable[[str, int], None] | None = None) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._on_dropped = on_dropped
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        # One statement for every batch, its values bound per row: SQLAlchemy compiles it once
        # and the driver runs the batch as one executemany. A statement built per record, with
        # its values inline, cost more of the gateway's core than the calls' SIP at 200 call
        # setups a second (its coercions on the loop, one driver round trip per record).
        insert = (postgresql.insert(calls) if self.engine.dialect.name == "postgresql"
                  else sqlite.insert(calls))
        self._upsert = insert.on_conflict_do_update(
            index_elements=[calls.c.id],
            set_={c.name: insert.excluded[c.name] for c in calls.columns if c.name != "id"})

    async def open(self) -> None:
        """Migrate the schema and start the writer. A database that cannot be reached is
        logged and the gateway serves calls anyway; the writer keeps trying with each batch."""
        if self.url.startswith("sqlite"):
            Path(self.engine.url.database or ".").parent.mkdir(parents=True, exist_ok=True)
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(migrate)
        except Exception as exc:
            event(logger, "records.unavailable", logging.ERROR, url=_safe(self.url),
                  error=str(exc))
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def save(self, record: dict[str, Any]) -> None:
        """Queue a call's record (the whole of it: a later save of the same call replaces
        the earlier one)."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._dropped("queue_full", 1)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until what is queued now has been written or given up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.engine.dispose()

    async def _write_loop(self) -> None:
        migrated = False
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(GATHER_S)
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            latest = {r["id"]: r for r in batch}  # only the newest state of each call counts
            try:
                async with self.engine.begin() as conn:
                    if not migrated:  # the database may have been down at start
                        await conn.run_sync(migrate)
                        migrated = True
                    await conn.execute(self._upsert, [to_row(r) for r in latest.values()])
                self.written += len(latest)
            except Exception as exc:
                event(logger, "records.write_failed", logging.ERROR, url=_safe(self.url),
                      records=len(latest), error=str(exc).splitlines()[0] if str(exc) else
                      type(exc).__name__)
                self._dropped("database", len(latest))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _dropped(self, reason: str, count: int) -> None:
        if self._on_dropped is not None:
            self._on_dropped(reason, count)

    # -- reads (the REST API) ---------------------------------------------------------------

    async def list_calls(self, *, limit: int, after: str | None = None,
                   direction: str | None = None, state: str | None = None,
                   since: float | None = None, until: float | None = None,
                   search: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; the page after the call ``after``; and whether more follow."""
        query = select(calls).order_by(calls.c.started_at.desc(), calls.c.id.desc())
        if direction:
            query = query.where(calls.c.direction == direction)
        if state:
            query = query.where(calls.c.state == state)
        if since is not None:
            query = query.where(calls.c.started_at >= _datetime(since))
        if until is not None:
            query = query.where(calls.c.started_at < _datetime(until))
        if search:
            pattern = f"%{search}%"
            query = query.where(or_(calls.c.from_uri.ilike(pattern),
                                    calls.c.to_uri.ilike(pattern),
                                    calls.c.id.ilike(pattern),
                                    calls.c.sip_call_id.ilike(pattern)))
        try:
            async with self.engine.connect() as conn:
                if after is not None:
                    anchor = (await conn.execute(
                        select(calls.c.started_at).where(calls.c.id == after))).scalar()
                    if anchor is None:
                        raise KeyError(after)
                    query = query.where(or_(calls.c.started_at < anchor, and_(
                        calls.c.started_at == anchor, calls.c.id < after)))
                rows = (await conn.execute(query.limit(limit + 1))).mappings().all()
        except KeyError:
            raise
        except Exception as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else
                                      type(exc).__name__) from None
        return [from_row(dict(r)) for r in rows[:limit]], len(rows) > limit

    async def get(self, call_id: str) -> dict[str, Any] | None:
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(calls).where(calls.c.id == call_id))
                       ).mappings().first()
        except Exception as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else
                                      type(exc).__name__) from None
        return from_row(dict(row)) if row is not None else None


def to_row(record: dict[str, Any]) -> dict[str, Any]:
    quality = record.get("quality") or {}
    recording = record.get("recording_path")
    return {
        "id": record["id"], "sip_call_id": record["sip_call_id"],
        "direction": record["direction"], "from_uri": record["from"], "to_uri": record["to"],
        "trunk": record.get("trunk"), "model": record.get("model"), "state": record["state"],
        "started_at": _datetime(record["started_at"]),
        "answered_at": _datetime(record.get("answered_at")),
        "ended_at": _datetime(record.get("ended_at")),
        "end_reason": record.get("end_reason"), "sip_status": record.get("sip_status"),
        "codec": record.get("codec"), "packets_in": quality.get("packets_in"),
        "packets_out": quality.get("packets_out"), "packets_lost": quality.get("lost"),
        "jitter_ms": quality.get("jitter_ms"), "mos": quality.get("mos"),
        "recording": Path(recording).name if recording else None,
        "transcript": record.get("transcript") or [], "turns": record.get("turns") or [],
        "transfers": record.get("transfers") or [],
    }


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the API shows it (the same shape as a live call's record)."""
    return {
        "id": row["id"], "object": "realtime.call", "sip_call_id": row["sip_call_id"],
        "direction": row["direction"], "from": row["from_uri"], "to": row["to_uri"],
        "trunk": row["trunk"], "state": row["state"], "model": row["model"],
        "codec": row["codec"], "started_at": _epoch(row["started_at"]),
        "answered_at": _epoch(row["answered_at"]), "ended_at": _epoch(row["ended_at"]),
        "end_reason": row["end_reason"], "sip_status": row["sip_status"],
        "quality": {"packets_in": row["packets_in"], "packets_out": row["packets_out"],
                    "lost": row["packets_lost"], "jitter_ms": row["jitter_ms"],
                    "mos": row["mos"]},
        "recording": row["recording"] is not None,
        "recording_file": row["recording"],
        "transcript": row["transcript"], "turns": row["turns"],
        "transfers": row["transfers"],
    }


def _datetime(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone: what was written was UTC
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp(), 3)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}"
