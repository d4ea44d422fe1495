"""Versioned schema of the call records (Alembic)."""
