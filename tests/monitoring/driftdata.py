"""Drift test data: a prepared catalog of generated imagery and request statistics written by the
transformer's recorder, unshifted or shifted (tests never need ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from synthetic import synthetic_aerial

from hndsr.raster import Raster
from hndsr.resample import lr_size, resize
from monitoring.shifts import SHIFTS
from serving.request_stats import JsonlDirSink, RequestStatsRecorder

TILE = 64
SCALES = (2.0, 3.0, 4.0)


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
