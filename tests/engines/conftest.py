from __future__ import annotations

from collections.abc import Iterator

import pytest

from .peer import PeerState, serve


@pytest.fixture(scope="module")
def peer_server() -> Iterator[tuple[str, PeerState]]:
    state = PeerState()
    with serve(state) as url:
        yield url, state


@pytest.fixture
def peer(peer_server: tuple[str, PeerState]) -> tuple[str, PeerState]:
    """The loopback OpenAI-compatible server, its script and records reset per test."""
    url, state = peer_server
    state.replies.clear()
    state.requests.clear()
    state.transcriptions.clear()
    state.speech_requests.clear()
    state.stream_closed_at = None
    state.last_piece_sent_at = None
    return url, state
