"""Fixtures of the monitoring tests: a prepared catalog of generated imagery and request statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from driftdata import SCALES, TILE, record, request_rasters
from PIL import Image
from synthetic import synthetic_aerial

from hndsr.prepare import PrepareConfig, prepare


@pytest.fixture(scope="session")
def drift_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """catalog.parquet of 80 generated 64 px images (one tile each), LR tiles at x2, x3, x4."""
    root = tmp_path_factory.mktemp("drift-data")
    raw = root / "raw"
    raw.mkdir()
    for i in range(80):
        Image.fromarray(synthetic_aerial((TILE, TILE), seed=i)).save(raw / f"img_{i:02d}.png")
    config = PrepareConfig(
        tile_size=TILE, scales=SCALES, max_nodata_fraction=0.5, val_fraction=0.1, test_fraction=0.1
    )
    prepare(raw, root / "processed", config)
    return root / "processed" / "catalog.parquet"


@pytest.fixture
def write_requests(tmp_path: Path) -> Callable[..., Path]:
    def write(n: int, shift: str | None = None, strength: float = 0.0, name: str = "stats") -> Path:
        stats = tmp_path / name
        record(stats, request_rasters(n, shift, strength))
        return stats

    return write
