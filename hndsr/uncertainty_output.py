"""Writing the per-pixel uncertainty of ``--samples K`` outputs.

GeoTIFF outputs hold it as their last band (:data:`hndsr.model_pass.UNCERTAINTY_BAND`, stored with the
image bands' scaling: value / dtype max = std in reflectance units). PNG and JPEG have no room for it:
it goes to a second image ``<stem>.uncertainty.png``, 16-bit grey, 65535 = a std of 1.0 (the std of
values in [0, 1] is at most 0.5), so small spreads keep their resolution even beside an 8-bit image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hndsr.image_write import write_image
from hndsr.model_pass import UNCERTAINTY_BAND
from hndsr.raster import Raster

UNCERTAINTY_PNG_DTYPE = "uint16"


def uncertainty_path(output: str | Path) -> Path:
    """Where the uncertainty image of a PNG/JPEG ``output`` goes: ``<stem>.uncertainty.png`` beside it."""
    p = Path(output)
    return p.with_name(f"{p.stem}.{UNCERTAINTY_BAND}.png")


def split_uncertainty(raster: Raster) -> tuple[Raster, Raster | None]:
    """``raster`` without its uncertainty band, and that band as a 1-band 16-bit raster (None when
    there is none)."""
    if not raster.band_names or raster.band_names[-1] != UNCERTAINTY_BAND:
        return raster, None
    image = Raster(
        data=raster.data[:-1], dtype=raster.dtype, profile=raster.profile, band_names=raster.band_names[:-1]
    )
    spread = Raster(
        data=raster.data[-1:], dtype=UNCERTAINTY_PNG_DTYPE, profile=None, band_names=(UNCERTAINTY_BAND,)
    )
    return image, spread


def write_image_and_uncertainty(path: str | Path, raster: Raster) -> Path | None:
    """:func:`write_image` for PNG/JPEG, plus the uncertainty band (if any) as ``<stem>.uncertainty.png``;
    returns that second path. Both files or neither: a failed second write removes the first."""
    image, spread = split_uncertainty(raster)
    write_image(path, image)
    if spread is None:
        return None
    second = uncertainty_path(path)
    try:
        write_image(second, spread)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return second


def last_band_mean(path: str | Path) -> float:
    """Mean of a GeoTIFF's last band in [0, 1] units (the uncertainty of ``--samples`` K >= 2), block by
    block: a scene-size output is never read whole."""
    import rasterio

    with rasterio.open(path) as ds:
        band = ds.count
        kind = np.dtype(ds.dtypes[band - 1])
        full = float(np.iinfo(kind).max) if kind.kind in "ui" else 1.0
        total, count = 0.0, 0
        for _, window in ds.block_windows(band):
            block = ds.read(band, window=window)
            total += float(block.sum(dtype=np.float64))
            count += block.size
    return total / max(count, 1) / full
