"""Cloud-Optimized GeoTIFF outputs through rio-cogeo: 512-pixel internal tiles, overviews (average
resampling) down to under one tile, DEFLATE with predictor 2 (integers) or 3 (float32). Band
descriptions, nodata and georeferencing are carried from the plain GeoTIFF the writers make first."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Final

from rasterio.io import DatasetReader
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

logger = logging.getLogger(__name__)

COG_BLOCK = 512
OVERVIEW_RESAMPLING: Final = "average"  # band means: a zoomed-out view keeps radiometry, not aliasing
# GDAL's block cache while the COG is assembled: its default is 5% of RAM, which a scene-size
# output would fill; this keeps the step's memory flat (benchmarks/results/cog_cost.json).
GDAL_CACHE_MB = 128

__all__ = ["COG_BLOCK", "cog_options", "is_cog", "to_cog"]


def cog_options(dtype: str, count: int) -> dict[str, Any]:
    """The creation options of a COG of ``count`` bands of ``dtype``."""
    options: dict[str, Any] = dict(cog_profiles.get("deflate"))
    options.update(
        blockxsize=COG_BLOCK,
        blockysize=COG_BLOCK,
        predictor=3 if dtype == "float32" else 2,
        bigtiff="IF_SAFER",
    )
    if count >= 3:
        options["photometric"] = "RGB"  # else GDAL would mark a 4th band (NIR, uncertainty) as alpha
    return options


def to_cog(source: DatasetReader | str | Path, dst: str | Path, *, in_memory: bool) -> None:
    """Write ``source`` (an open dataset or a GeoTIFF path) as a COG at ``dst`` (a path or a
    ``/vsimem/`` name). ``in_memory=False`` puts rio-cogeo's intermediate file on disk beside ``dst``
    (compressed), for outputs larger than memory."""
    if isinstance(source, (str, Path)):
        import rasterio

        with rasterio.open(source) as src:
            to_cog(src, dst, in_memory=in_memory)
        return
    options = cog_options(source.dtypes[0], source.count)
    with warnings.catch_warnings():
        # An output with no CRS (e.g. from a PNG input) is fine: the pixels are still tiled.
        warnings.simplefilter("ignore")
        cog_translate(
            source,
            str(dst),
            options,
            overview_resampling=OVERVIEW_RESAMPLING,
            in_memory=in_memory,
            allow_intermediate_compression=not in_memory,
            config={"GDAL_CACHEMAX": GDAL_CACHE_MB, "GDAL_PAM_ENABLED": "NO"},
            quiet=True,
        )


def is_cog(path: str | Path) -> bool:
    """Whether ``path`` is a valid COG by rio-cogeo's validator (no errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        valid, errors, _ = cog_validate(str(path), quiet=True)
    return bool(valid and not errors)
