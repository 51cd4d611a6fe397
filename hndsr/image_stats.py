"""Per-tile image statistics: nodata mask, band mean/std and sharpness.

``hndsr prepare`` records them in ``catalog.parquet`` and ``monitoring.features`` computes them on
served requests, so the drift job compares the same definitions.
"""

from __future__ import annotations

import numpy as np

from hndsr.raster import Raster

INTEGER_DTYPES = ("uint8", "uint16")


def nodata_mask(raster: Raster) -> np.ndarray:
    """(H, W) True where every band holds the nodata value (declared, else 0) or is NaN."""
    data = raster.data
    declared = raster.profile.nodata if raster.profile is not None else None
    if declared is not None and np.isnan(declared):
        return np.isnan(data).all(axis=0)
    value = 0.0
    if declared is not None:
        value = declared / float(np.iinfo(raster.dtype).max) if raster.dtype in INTEGER_DTYPES else declared
    mask: np.ndarray = (np.isclose(data, np.float32(value), rtol=0.0, atol=1e-7) | np.isnan(data)).all(axis=0)
    return mask


def tile_stats(pixels: np.ndarray, nodata: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over the valid pixels of a (bands, H, W) tile."""
    valid = pixels[:, ~nodata].astype(np.float64)
    return [round(float(v), 6) for v in valid.mean(axis=1)], [round(float(v), 6) for v in valid.std(axis=1)]


def luma(pixels: np.ndarray) -> np.ndarray:
    """BT.601 luma of the first three bands of a (bands, H, W) tile in [0, 1], in 8-bit units."""
    r, g, b = (pixels[i].astype(np.float64) for i in range(3))
    return (0.299 * r + 0.587 * g + 0.114 * b) * 255.0


def laplacian(y: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of a 2-D array (interior pixels)."""
    return y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]


def laplacian_variance(lap: np.ndarray) -> float:
    """Sharpness from a Laplacian already computed (:func:`sharpness`'s rounding)."""
    return round(float(lap.var()), 4)


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of luma (BT.601) in 8-bit units: 0 for a blank tile."""
    return laplacian_variance(laplacian(luma(pixels)))
