"""Drift test data: a prepared catalog of generated imagery and request statistics written by the
transformer's recorder, unshifted or shifted (tests never need ../shared/data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_aerial
from PIL import Image

from hndsr.imageio import Raster
from hndsr.prepare import PrepareConfig, prepare
from hndsr.resample import lr_size, resize
from monitoring.shifts import SHIFTS
from serving.request_stats import JsonlDirSink, RequestStatsRecorder

TILE = 64
SCALES = (2.0, 3.0, 4.0)


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


def request_rasters(
    n: int, shift: str | None = None, strength: float = 0.0, seed0: int = 1000
) -> list[Raster]:
    """LR request images like the catalog's (new sources, the same scales), optionally shifted."""
    out = []
    for i in range(n):
        hr = torch.from_numpy(
            np.moveaxis(synthetic_aerial((TILE, TILE), seed=seed0 + i), -1, 0) / np.float32(255)
        )
        lr = resize(hr, lr_size((TILE, TILE), SCALES[i % len(SCALES)]), antialias=True).clamp(0, 1).numpy()
        if shift is not None:
            lr = np.clip(SHIFTS[shift](lr, strength), 0.0, 1.0)
        out.append(Raster(data=np.ascontiguousarray(lr, dtype=np.float32), dtype="uint8"))
    return out


def record(stats_dir: Path, rasters: list[Raster], **context: object) -> RequestStatsRecorder:
    """Write the rasters' statistics through the transformer's recorder (real sink, real thread)."""
    recorder = RequestStatsRecorder(JsonlDirSink(stats_dir), max_pending=len(rasters) + 1)
    for raster in rasters:
        assert recorder.offer(raster, scale=4.0, steps=0, **context)
    assert recorder.wait_idle(60)
    recorder.close()
    return recorder


@pytest.fixture
def write_requests(tmp_path: Path) -> Callable[..., Path]:
    def write(n: int, shift: str | None = None, strength: float = 0.0, name: str = "stats") -> Path:
        stats = tmp_path / name
        record(stats, request_rasters(n, shift, strength))
        return stats

    return write
