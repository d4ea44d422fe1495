"""Call records keep the steps of each transfer (``/refer``): progress, success or failure.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before this revision had no transfers: an empty list, not NULL.
    op.add_column("calls", sa.Column("transfers", sa.JSON, nullable=False,
                                     server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("transfers")
