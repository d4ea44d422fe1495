"""Shared test helpers: where the repository and the shared conformance data live."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return Path(__file__).resolve().parents[1]


# The `shared` folder beside the repository: conformance messages, references.
SHARED = repo_root().parent / "shared"
