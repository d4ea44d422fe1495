"""Alembic's environment: run on the connection :func:`callgate.observe.records.migrate`
hands over (the gateway migrates itself at start; no alembic.ini is needed)."""

from __future__ import annotations

from alembic import context

from callgate.observe.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
