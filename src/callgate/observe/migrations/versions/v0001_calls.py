"""Call records: one row per call with its transcript and turn timings.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sip_call_id", sa.Text, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("from_uri", sa.Text, nullable=False),
        sa.Column("to_uri", sa.Text, nullable=False),
        sa.Column("trunk", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.Text),
        sa.Column("sip_status", sa.Integer),
        sa.Column("codec", sa.String(32)),
        sa.Column("packets_in", sa.Integer),
        sa.Column("packets_out", sa.Integer),
        sa.Column("packets_lost", sa.Integer),
        sa.Column("jitter_ms", sa.Float),
        sa.Column("mos", sa.Float),
        sa.Column("recording", sa.Text),
        sa.Column("transcript", sa.JSON, nullable=False),
        sa.Column("turns", sa.JSON, nullable=False),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at", "id"])
    op.create_index("ix_calls_direction", "calls", ["direction"])
    op.create_index("ix_calls_state", "calls", ["state"])


def downgrade() -> None:
    op.drop_table("calls")
