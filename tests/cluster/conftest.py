from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.redis_proc import redis_server


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url
