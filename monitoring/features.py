"""Image statistics that describe what the model is fed, without storing any image content.

One function, :func:`raster_features`, computes them for the training reference (the tiles listed in
``catalog.parquet``) and for every served request, so that the drift job compares like with like.
Mean, standard deviation, sharpness and nodata reuse the definitions of :mod:`hndsr.image_stats` (the
catalog's own statistics).
"""

from __future__ import annotations

import numpy as np

from hndsr.image_stats import laplacian, laplacian_variance, luma, nodata_mask, tile_stats
from hndsr.raster import Raster

#: Features the drift job tests, in report order.
DRIFT_FEATURES: tuple[str, ...] = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "sharpness",
    "edge_crispness",
    "detail_to_contrast",
    "colourfulness",
    "bright_fraction",
    "nodata_fraction",
)
#: Recorded beside the features for dashboards and reports; not drift-tested (request sizes and
#: scales say nothing about the imagery, and the reference holds fixed-size tiles).
CONTEXT_FIELDS: tuple[str, ...] = ("height", "width", "bands")

#: A pixel brighter than this in every band (values in [0, 1]) is cloud-, haze- or snow-like.
BRIGHT_LEVEL = 0.8


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of (3, N) RGB values in [0, 1], in 8-bit units."""
    r, g, b = (rgb[i].astype(np.float64) * 255.0 for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def detail_features(pixels: np.ndarray) -> dict[str, float]:
    """Sharpness (the catalog's: the variance of luma's Laplacian) and two ratios of the Laplacian's
    std that fall with blur at any contrast, where sharpness also moves with contrast and scene:
    ``edge_crispness`` over luma's mean gradient magnitude (fine detail against edges) and
    ``detail_to_contrast`` over luma's std. Ratios are 0 for a flat tile. One luma, one Laplacian."""
    y = luma(pixels)
    lap = laplacian(y)
    detail = float(lap.std())
    gradient = float(np.hypot(np.diff(y, axis=1)[:-1, :], np.diff(y, axis=0)[:, :-1]).mean())
    spread = float(y.std())
    return {
        "sharpness": laplacian_variance(lap),
        "edge_crispness": round(detail / gradient, 6) if gradient > 0 else 0.0,
        "detail_to_contrast": round(detail / spread, 6) if spread > 0 else 0.0,
    }


def raster_features(raster: Raster) -> dict[str, float]:
    """The drift features and context of one image (its first three bands, valid pixels only)."""
    rgb = raster.rgb()
    nodata = nodata_mask(raster)
    valid_fraction = 1.0 - float(nodata.mean())
    features: dict[str, float] = {
        "height": float(raster.height),
        "width": float(raster.width),
        "bands": float(raster.bands),
        "nodata_fraction": round(1.0 - valid_fraction, 6),
    }
    if valid_fraction == 0.0:  # nothing to describe: the nodata fraction says it all
        return features | {name: 0.0 for name in DRIFT_FEATURES if name != "nodata_fraction"}
    means, stds = tile_stats(rgb, nodata)
    valid = rgb[:, ~nodata]
    features.update(zip(("mean_r", "mean_g", "mean_b"), means, strict=True))
    features.update(zip(("std_r", "std_g", "std_b"), stds, strict=True))
    features.update(detail_features(rgb))
    features["colourfulness"] = round(colourfulness(valid), 4)
    features["bright_fraction"] = round(float((valid.min(axis=0) > BRIGHT_LEVEL).mean()), 6)
    return features
