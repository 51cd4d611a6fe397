"""Fixtures of the job tests: one real Redis for the session (Debian's redis-server on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tooling import require_tool

from serving.jobs.redisserver import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    require_tool("redis-server")
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server
    assert server.proc is None
