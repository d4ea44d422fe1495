"""Call records on SQLite and on a real PostgreSQL server: migrations from an empty database,
upserts, the API's list/get reads, and a database that is down (never fatal)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from callgate.observe.records import RecordStore, database_url, migrate
from tests.observe.postgres import Postgres, pg_bin, postgres_server


def record(call_id: str, started: float, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": call_id, "sip_call_id": f"{call_id}@peer", "direction": "inbound",
        "from": "sip:+15550100@trunk", "to": "sip:proj@gw", "trunk": None, "state": "ringing",
        "model": None, "codec": None, "started_at": started, "answered_at": None,
        "ended_at": None, "end_reason": None, "sip_status": None, "quality": {},
        "transcript": [], "turns": [], "recording_path": None,
    }
    return {**base, **fields}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    with postgres_server() as server:
        yield server


def sqlite_url(tmp_path: Path) -> str:
    return database_url(None, tmp_path / "data")


async def exercise(url: str) -> None:
    dropped: list[tuple[str, int]] = []
    store = RecordStore(url, on_dropped=lambda reason, n: dropped.append((reason, n)))
    await store.open()
    try:
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar()
        assert {"calls", "alembic_version"} <= set(tables)
        assert version == "0002"

        for n in range(5):
            store.save(record(f"rtc_{n}", 1000.0 + n,
                              direction="outbound" if n == 3 else "inbound"))
        # The same call again, ended: the newer state replaces the older one.
        store.save(record("rtc_4", 1004.0, state="ended", sip_status=200, model="echo",
                          codec="PCMU", ended_at=1010.5, end_reason="caller hung up",
                          quality={"packets_in": 500, "packets_out": 498, "lost": 2,
                                   "jitter_ms": 1.5, "mos": 4.38},
                          transcript=[{"at": 1005.0, "role": "caller", "text": "héllo"},
                                      {"at": 1006.0, "role": "agent", "text": "hi"}],
                          turns=[{"response_id": "resp_1", "points": {"committed": 210}}],
                          transfers=[{"at": 1009.0, "type": "realtime.call.transferred",
                                      "target_uri": "tel:+14155550123", "sip_status": 200,
                                      "reason": "OK"}],
                          recording_path="/somewhere/rtc_4.wav"))
        await store.flush()
        assert store.written >= 5 and not dropped

        page, more = await store.list_calls(limit=2)
        assert [r["id"] for r in page] == ["rtc_4", "rtc_3"] and more
        page, more = await store.list_calls(limit=2, after="rtc_3")
        assert [r["id"] for r in page] == ["rtc_2", "rtc_1"] and more
        page, more = await store.list_calls(limit=10, after="rtc_1")
        assert [r["id"] for r in page] == ["rtc_0"] and not more
        page, _ = await store.list_calls(limit=10, direction="outbound")
        assert [r["id"] for r in page] == ["rtc_3"]
        page, _ = await store.list_calls(limit=10, state="ended")
        assert [r["id"] for r in page] == ["rtc_4"]
        page, _ = await store.list_calls(limit=10, since=1001.0, until=1003.0)
        assert [r["id"] for r in page] == ["rtc_2", "rtc_1"]
        page, _ = await store.list_calls(limit=10, search="RTC_2@")
        assert [r["id"] for r in page] == ["rtc_2"]
        with pytest.raises(KeyError):
            await store.list_calls(limit=10, after="rtc_nope")

        got = await store.get("rtc_4")
        assert got is not None
        assert got["started_at"] == 1004.0 and got["ended_at"] == 1010.5
        assert got["quality"] == {"packets_in": 500, "packets_out": 498, "lost": 2,
                                  "jitter_ms": 1.5, "mos": 4.38}
        assert got["transcript"][0]["text"] == "héllo"
        assert got["turns"][0]["points"] == {"committed": 210}
        assert got["transfers"][0]["sip_status"] == 200
        assert got["recording_file"] == "rtc_4.wav" and got["recording"] is True
        assert await store.get("rtc_missing") is None
    finally:
        await store.close()
    # Opening again finds the schema current: the migration is not repeated.
    again = RecordStore(url)
    await again.open()
    assert (await again.get("rtc_0")) is not None
    await again.close()


def test_records_on_sqlite(tmp_path: Path) -> None:
    asyncio.run(exercise(sqlite_url(tmp_path)))
    assert (tmp_path / "data" / "callgate.db").is_file()


@pytest.mark.slow
def test_records_on_postgresql(postgres: Postgres) -> None:
    asyncio.run(exercise(database_url(postgres.url, Path("unused"))))


def test_records_from_before_transfers_were_kept_upgrade(tmp_path: Path) -> None:
    async def run() -> dict[str, Any] | None:
        url = sqlite_url(tmp_path)
        Path(tmp_path / "data").mkdir()
        old = create_async_engine(url)
        async with old.begin() as conn:
            await conn.run_sync(lambda c: migrate(c, "0001"))
            await conn.execute(text(
                "INSERT INTO calls (id, sip_call_id, direction, from_uri, to_uri, state, "
                "started_at, transcript, turns) VALUES ('rtc_old', 'x@peer', 'inbound', "
                "'sip:a@b', 'sip:c@d', 'ended', '2026-12-01 00:00:00', '[]', '[]')"))
        await old.dispose()
        store = RecordStore(url)
        await store.open()
        try:
            return await store.get("rtc_old")
        finally:
            await store.close()

    got = asyncio.run(run())
    assert got is not None and got["transfers"] == []


def test_database_urls_get_async_drivers() -> None:
    assert database_url("postgresql://u@h/db", Path()) == "postgresql+asyncpg://u@h/db"
    assert database_url("postgres://u@h/db", Path()) == "postgresql+asyncpg://u@h/db"
    assert database_url(None, Path("/d")) == "sqlite+aiosqlite:////d/callgate.db"


def test_a_dead_database_is_counted_never_raised(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, int]]:
        dropped: list[tuple[str, int]] = []
        # Nobody listens on this port: every write fails.
        store = RecordStore("postgresql+asyncpg://callgate@127.0.0.1:9/none",
                            on_dropped=lambda reason, n: dropped.append((reason, n)))
        await store.open()  # logged, not raised
        store.save(record("rtc_a", 1.0))
        store.save(record("rtc_b", 2.0))
        await store.flush()
        await store.close()
        return dropped

    assert sum(n for reason, n in asyncio.run(run()) if reason == "database") == 2


def test_a_full_queue_drops_the_newest(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, int]]:
        dropped: list[tuple[str, int]] = []
        store = RecordStore(sqlite_url(tmp_path), queue_size=10,
                            on_dropped=lambda reason, n: dropped.append((reason, n)))
        for n in range(15):  # before the writer runs: nothing drains the queue yet
            store.save(record(f"rtc_{n}", float(n)))
        await store.open()
        await store.flush()
        page, _ = await store.list_calls(limit=100)
        await store.close()
        assert len(page) == 10
        return dropped

    assert asyncio.run(run()) == [("queue_full", 1)] * 5


@pytest.mark.slow
def test_postgres_outage_then_recovery(postgres: Postgres) -> None:
    async def run() -> list[tuple[str, int]]:
        dropped: list[tuple[str, int]] = []
        store = RecordStore(database_url(postgres.url, Path()),
                            on_dropped=lambda reason, n: dropped.append((reason, n)))
        await store.open()
        postgres.stop("immediate")
        try:
            store.save(record("rtc_during", 5000.0))
            await store.flush(timeout=30)
        finally:
            postgres.start()
        store.save(record("rtc_after", 5001.0))
        await store.flush(timeout=30)
        assert (await store.get("rtc_after")) is not None
        await store.close()
        return dropped

    assert asyncio.run(run()) == [("database", 1)]

