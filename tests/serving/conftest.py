"""Fixtures of the serving family: the tiny model served by a real predictor and transformer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servingstack import Server, predictor, serving_pair, transformer, write_checkpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(predictor, transformer) on the tiny checkpoint, one per test module; 256 px tiles so small test
    images still span many tiles, and no effective rate limit. Modules needing other flags define
    their own ``stack``."""
    tmp = tmp_path_factory.mktemp("servers")
    ckpt = write_checkpoint(tmp / "ckpt")
    args = ("--rate-limit-rps", "1000", "--rate-limit-burst", "1000", "--tile", "256")
    with serving_pair(predictor(tmp, ckpt).start(), lambda p: transformer(tmp, p.url, *args).start()) as pair:
        yield pair
