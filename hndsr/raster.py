"""The image every reader returns and every writer takes: float32 (bands, H, W) in [0, 1] with its
source dtype, georeferencing and band names; the suffixes and pixel-range rules the I/O shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hndsr.errors import (
    InputError,
    ScaleError,
    UnsupportedFormatError,
    ValueRangeError,
)

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})

DEFAULT_MAX_PIXELS = 400_000_000

SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
FORMAT_LABEL = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
RGB_NAMES = ("red", "green", "blue")
FORMAT_HINT = "use PNG, JPEG, TIFF or GeoTIFF"


@dataclass(frozen=True)
class GeoInfo:
    """Georeferencing carried from a source raster to its outputs."""

    crs: str | None  # WKT as rasterio gives it (crs.to_wkt()); "EPSG:xxxx" strings are accepted too
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f (rasterio order)
    nodata: float | None  # in the units of the source dtype (e.g. 0 or 255 for uint8)

    def scaled(self, scale_x: float, scale_y: float) -> GeoInfo:
        """Georeferencing of the same footprint sampled ``scale_x`` x ``scale_y`` times more finely."""
        if not (np.isfinite(scale_x) and np.isfinite(scale_y) and scale_x > 0 and scale_y > 0):
            raise ScaleError(f"scale factors must be positive and finite; got {scale_x} x {scale_y}")
        a, b, c, d, e, f = self.transform
        # Column terms shrink with the x scale, row terms with the y scale; the origin stays put.
        return GeoInfo(
            crs=self.crs,
            transform=(a / scale_x, b / scale_y, c, d / scale_x, e / scale_y, f),
            nodata=self.nodata,
        )


@dataclass
class Raster:
    """An image in memory: float32 (bands, H, W) in [0, 1] for integer sources; floats kept as read."""

    data: np.ndarray
    dtype: str = "float32"
    profile: GeoInfo | None = None
    band_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 3:
            shape = getattr(self.data, "shape", None)
            raise InputError(f"Raster data must have shape (bands, height, width); got shape {shape}")
        if not self.band_names:
            self.band_names = default_band_names(self.bands)
        elif len(self.band_names) != self.bands:
            raise InputError(
                f"Raster has {self.bands} bands but {len(self.band_names)} band names {self.band_names}"
            )

    @property
    def bands(self) -> int:
        return int(self.data.shape[0])

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    def rgb(self) -> np.ndarray:
        """The first three bands as float32 (3, H, W), assumed R, G, B. May be a view of ``data``."""
        if self.bands < 3:
            raise InputError(
                f"HNDSR needs at least 3 bands (R,G,B); got {self.bands} ({', '.join(self.band_names)}): "
                "convert the image to RGB or supply a 3+ band GeoTIFF"
            )
        return np.ascontiguousarray(self.data[:3], dtype=np.float32)

    def extra_bands(self) -> np.ndarray | None:
        """Bands beyond the first three (e.g. NIR), or None."""
        if self.bands <= 3:
            return None
        return self.data[3:]


def is_image_file(path: str | Path) -> bool:
    """True for an existing regular file with a supported suffix (content is not checked)."""
    p = Path(path)
    return p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file()


def to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Integers divided by their dtype's max; floats kept as they are (writers clip). The one
    conversion of stored pixels to floats: the serving wire decodes 8-bit crops with it too."""
    if arr.dtype.kind in "ui":
        out = arr.astype(np.float32)
        out /= np.float32(np.iinfo(arr.dtype).max)
        return out
    if arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.kind == "b":
        return arr.astype(np.float32)
    raise UnsupportedFormatError(
        f"{name} has pixel type {arr.dtype.name}, which HNDSR cannot use: "
        "convert it to uint8, uint16 or float32"
    )


PIXEL_RANGE_TOLERANCE = 0.01


def check_pixel_range(values: np.ndarray, name: str, tolerance: float = PIXEL_RANGE_TOLERANCE) -> None:
    """Refuse non-finite values and values outside ``[0, 1]`` (beyond ``tolerance``) with a
    :class:`ValueRangeError` that says how to fix the data. One pass each for the extremes."""
    if values.size == 0:
        return
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueRangeError(f"{name} holds non-finite values (NaN or Inf): fix or mask them first")
    if lo < -tolerance or hi > 1.0 + tolerance:
        raise ValueRangeError(
            f"{name} holds values from {lo:.4g} to {hi:.4g}, outside [0, 1]: float images must hold "
            "values in [0, 1] (integer images are divided by their type's maximum); divide 8-bit data "
            "stored as float by 255 and 16-bit data by 65535, or send it as uint8/uint16"
        )


def default_band_names(bands: int) -> tuple[str, ...]:
    if bands == 1:
        return ("gray",)
    if bands == 3:
        return RGB_NAMES
    if bands == 4:
        return (*RGB_NAMES, "nir")
    return tuple(f"band{i + 1}" for i in range(bands))


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
