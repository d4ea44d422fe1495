"""The call records table. Its history is in ``migrations/``: change both together."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

calls = Table(
    "calls", metadata,
    Column("id", String(64), primary_key=True),          # rtc_…, the API's call id
    Column("sip_call_id", Text, nullable=False),
    Column("direction", String(16), nullable=False),
    Column("from_uri", Text, nullable=False),
    Column("to_uri", Text, nullable=False),
    Column("trunk", String(128)),
    Column("model", String(128)),
    Column("state", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("answered_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("end_reason", Text),
    Column("sip_status", Integer),
    Column("codec", String(32)),
    Column("packets_in", Integer),
    Column("packets_out", Integer),
    Column("packets_lost", Integer),
    Column("jitter_ms", Float),
    Column("mos", Float),
    Column("recording", Text),   # the recording's file name in the recordings folder
    Column("transcript", JSON, nullable=False),
    Column("turns", JSON, nullable=False),
    Column("transfers", JSON, nullable=False, server_default="[]"),  # steps of each /refer
    Index("ix_calls_started_at", "started_at", "id"),
    Index("ix_calls_direction", "direction"),
    Index("ix_calls_state", "state"),
)
