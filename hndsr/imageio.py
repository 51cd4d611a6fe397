"""Reading and writing images: PNG/JPEG read through Pillow, TIFF/GeoTIFF through rasterio; PNG is
written by :func:`png_bytes` (numpy + zlib), JPEG by Pillow.

Every reader returns a :class:`Raster`: float32 data of shape (bands, H, W) in [0, 1] plus the source
dtype, georeferencing and band names. Every writer validates values first (non-finite -> error), clips to
[0, 1], rounds to the output dtype and writes atomically.

Decisions worth knowing:

* Sizes are checked against ``max_pixels`` from the header, before any pixel data is decoded.
* Pillow reads 16-bit colour PNGs as 8-bit, so those are read through GDAL's PNG driver instead:
  16-bit RGB PNG round trips losslessly.
* Alpha is dropped from PNG/JPEG inputs. TIFF bands are all kept (a 4th band is assumed to be NIR, even
  when GDAL labels it alpha, which it does by default for 4-band uint8 files).
* Truncated PNG/JPEG files are errors, never partially decoded images.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile

try:  # ISA-L deflate: ~6x faster than zlib at levels 1-3, standard zlib streams (any PNG reader)
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps the writer working without it
    isal_zlib = None  # type: ignore[assignment]

from hndsr.errors import (
    HNDSRError,
    InputError,
    OutputValidationError,
    ScaleError,
    UnsupportedFormatError,
    ValueRangeError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "GeoInfo",
    "GeoTIFFRowWriter",
    "Raster",
    "check_pixel_range",
    "encode_image",
    "is_image_file",
    "read_image",
    "read_image_bytes",
    "write_image",
]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})

DEFAULT_MAX_PIXELS = 400_000_000
# Memory scales with bands too: the budget is max_pixels of up to this many bands, so a 13-band scene gets a
# proportionally smaller pixel budget.
_BAND_BUDGET = 4

_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
_FMT_ALIASES = {
    "png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "tiff": "tiff",
    "tif": "tiff",
    "geotiff": "tiff",
    "gtiff": "tiff",
}
_FORMAT_LABEL = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_OUTPUT_DTYPES = {"png": ("uint8", "uint16"), "jpeg": ("uint8",), "tiff": ("uint8", "uint16", "float32")}
_JPEG_QUALITY = 95
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_RGB_NAMES = ("red", "green", "blue")
_HINT = "use PNG, JPEG, TIFF or GeoTIFF"
PNG_LEVEL = 6  # zlib level of PNG output: the usual default


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
            self.band_names = _default_band_names(self.bands)
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


# ---------------------------------------------------------------------------------------------- reading


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Raster:
    """Read a PNG, JPEG, TIFF or GeoTIFF file. Raises InputError (or a subclass) for anything unusable."""
    p = Path(path)
    name = str(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise UnsupportedFormatError(f"unsupported image format '{shown}' for {name}: {_HINT}")
    if not p.exists():
        raise InputError(f"no such file: {name}; check the path")
    if not p.is_file():
        raise InputError(f"{name} is not a regular file; pass an image file")
    try:
        with open(p, "rb") as fp:
            head = fp.read(32)
            kind = _sniff(head, name)
            _note_mismatch(kind, _SUFFIX_FORMAT[suffix], name)
            if _needs_gdal_png(kind, head):
                return _read_gdal(lambda: rasterio.open(p, driver="PNG"), name, max_pixels, kind, head)
            if kind == "tiff":
                return _read_gdal(lambda: rasterio.open(p, driver="GTiff"), name, max_pixels, kind, head)
            fp.seek(0)
            return _read_pillow(fp, name, max_pixels, kind)
    except OSError as e:  # open/read of the file itself (permissions, I/O); decoder errors are wrapped below
        raise InputError(f"cannot read {name}: {_short(e)}; check the file is readable") from e


def read_image_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<in-memory image>"
) -> Raster:
    """Same as :func:`read_image` for an encoded image held in memory; ``name`` only labels errors."""
    head = bytes(data[:32])
    kind = _sniff(head, name)
    if _needs_gdal_png(kind, head):
        return _read_gdal(lambda: _open_memory(data, "PNG"), name, max_pixels, kind, head)
    if kind == "tiff":
        return _read_gdal(lambda: _open_memory(data, "GTiff"), name, max_pixels, kind, head)
    return _read_pillow(io.BytesIO(data), name, max_pixels, kind)


def _sniff(head: bytes, name: str) -> str:
    """Format from the file signature, so a mislabelled or garbage file never reaches a decoder blind."""
    if not head:
        raise InputError(f"{name} is empty (0 bytes); re-export or re-download the image")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    raise UnsupportedFormatError(
        f"{name} is not a PNG, JPEG or TIFF file (unrecognised content): it is corrupt or in another "
        f"format; {_HINT}"
    )


def _note_mismatch(kind: str, expected: str, name: str) -> None:
    if kind != expected:
        logger.debug("%s has a %s suffix but %s content; decoding it as %s", name, expected, kind, kind)


def _needs_gdal_png(kind: str, head: bytes) -> bool:
    # IHDR sits at a fixed offset: bit depth at byte 24, colour type at 25. Pillow truncates 16-bit
    # colour (RGB, gray+alpha, RGBA) to 8 bits; 16-bit gray (type 0) it reads fine as "I;16".
    return kind == "png" and len(head) >= 26 and head[24] == 16 and head[25] in (2, 4, 6)


def _png_has_alpha(head: bytes) -> bool:
    return len(head) >= 26 and head[25] in (4, 6)


@contextmanager
def _decoder_errors(name: str, kind: str) -> Iterator[None]:
    """Turn any decoder exception into one InputError line naming the file."""
    try:
        yield
    except (HNDSRError, MemoryError):
        raise
    except Exception as e:
        label = _FORMAT_LABEL.get(kind, kind)
        raise InputError(
            f"cannot decode {name} as {label} ({_short(e)}): the file is corrupt or truncated; "
            "re-export or re-download it"
        ) from e


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_size(width: int, height: int, bands: int, max_pixels: int, name: str) -> None:
    pixels = width * height
    if pixels > max_pixels or pixels * max(bands, 1) > max_pixels * _BAND_BUDGET:
        raise InputError(
            f"{name} is {width}x{height} pixels with {bands} bands, over the limit of {max_pixels:,} pixels "
            f"(proportionally fewer above {_BAND_BUDGET} bands): tile large scenes into smaller images or "
            "use the async batch path"
        )


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


# Float pixels are read as they are (integers are divided by their type's max): they must already be
# values in [0, 1]. A little overshoot (resampled or compressed float data) is harmless to the model.
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


def _default_band_names(bands: int) -> tuple[str, ...]:
    if bands == 1:
        return ("gray",)
    if bands == 3:
        return _RGB_NAMES
    if bands == 4:
        return (*_RGB_NAMES, "nir")
    return tuple(f"band{i + 1}" for i in range(bands))


def _read_pillow(fp: BinaryIO, name: str, max_pixels: int, kind: str) -> Raster:
    plugin = PngImagePlugin.PngImageFile if kind == "png" else JpegImagePlugin.JpegImageFile
    with _decoder_errors(name, kind):
        # Plugin classes directly, not Image.open: parse the header only and skip Pillow's own global
        # bomb limit, so max_pixels is the single limit that applies.
        im = plugin(fp)
        try:
            width, height = im.size
            _check_size(width, height, len(im.getbands()), max_pixels, name)
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                # Someone set Pillow's process-wide flag; without it Pillow no longer refuses truncated data.
                _require_complete(fp, kind, name)
            im.load()
            arr, dtype = _pillow_pixels(im, name)
        finally:
            im.close()
    data = to_unit_float(arr, name)
    return Raster(data=data, dtype=dtype, profile=None, band_names=_default_band_names(data.shape[0]))


def _require_complete(fp: BinaryIO, kind: str, name: str) -> None:
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(max(0, size - 65536))
    tail = fp.read()
    fp.seek(0)
    end_marker = b"IEND" if kind == "png" else b"\xff\xd9"
    if end_marker not in tail:
        raise InputError(
            f"cannot decode {name} as {_FORMAT_LABEL[kind]}: the file is truncated (no end marker); "
            "re-export or re-download it"
        )


def _pillow_pixels(im: Image.Image, name: str) -> tuple[np.ndarray, str]:
    """Pixels as (bands, H, W) in their integer dtype, alpha dropped."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "P"):
        if mode in ("P", "PA"):
            im = im.convert("RGBA")  # RGBA, not RGB: palette transparency converts without a warning
        logger.debug("%s: dropping the alpha channel of a %s image", name, mode)
        arr = np.asarray(im)[..., :-1]
    elif mode in ("L", "RGB"):
        arr = np.asarray(im)
    elif mode == "1":
        arr = np.asarray(im.convert("L"))
    elif mode in ("CMYK", "YCbCr"):
        arr = np.asarray(im.convert("RGB"))
    elif mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)  # also normalises big-endian storage
    elif mode == "I":
        # 16-bit grayscale PNG on some Pillow versions; values still fit uint16.
        arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    else:
        raise UnsupportedFormatError(
            f"{name} has Pillow pixel mode '{mode}', which HNDSR cannot use: save it as 8-bit RGB or as TIFF"
        )
    arr = arr[np.newaxis] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    arr = np.ascontiguousarray(arr)
    return arr, arr.dtype.name


@contextmanager
def _open_memory(data: bytes, driver: str) -> Iterator[DatasetReader]:
    with MemoryFile(data) as mf, mf.open(driver=driver) as src:
        yield src


def _read_gdal(
    opener: Callable[[], AbstractContextManager[Any]], name: str, max_pixels: int, kind: str, head: bytes
) -> Raster:
    with warnings.catch_warnings(), _decoder_errors(name, kind):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with opener() as src:
            _check_size(src.width, src.height, src.count, max_pixels, name)
            if len(set(src.dtypes)) != 1:
                raise UnsupportedFormatError(
                    f"{name} mixes pixel types across bands ({', '.join(src.dtypes)}): convert all bands "
                    "to one type"
                )
            arr = src.read()
            descriptions = tuple(src.descriptions)
            profile = _geo_from_dataset(src)
            if src.gcps[0]:
                logger.debug("%s: ground control points are not carried over", name)
    dtype = arr.dtype.name
    if kind == "png" and _png_has_alpha(head):
        logger.debug("%s: dropping the alpha channel of a 16-bit PNG", name)
        arr = arr[:-1]
        descriptions = descriptions[:-1]
    data = to_unit_float(arr, name)
    return Raster(data=data, dtype=dtype, profile=profile, band_names=_band_names(descriptions))


def _geo_from_dataset(src: DatasetReader) -> GeoInfo | None:
    t = src.transform
    transform = (float(t.a), float(t.b), float(t.c), float(t.d), float(t.e), float(t.f))
    if src.crs is None and transform == _IDENTITY:
        return None
    crs = src.crs.to_wkt() if src.crs is not None else None
    nodata = None if src.nodata is None else float(src.nodata)
    return GeoInfo(crs=crs, transform=transform, nodata=nodata)


def _band_names(descriptions: tuple[str | None, ...]) -> tuple[str, ...]:
    defaults = _default_band_names(len(descriptions))
    if not any(descriptions):
        return defaults
    # Partly described files: keep what is there and number the rest.
    return tuple(d if d else f"band{i + 1}" for i, d in enumerate(descriptions))


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class _Prepared:
    pixels: np.ndarray  # (bands, H, W) in the output dtype
    dtype: str
    band_names: tuple[str, ...]
    profile: GeoInfo | None
    nodata: float | None


def write_image(path: str | Path, raster: Raster, *, dtype: str | None = None) -> None:
    """Write by suffix (.png, .jpg/.jpeg, .tif/.tiff), atomically: on failure no output is left behind.

    ``dtype`` defaults to the raster's source dtype when it is uint8/uint16, else uint8. TIFF also takes
    "float32". Non-finite values raise OutputValidationError before anything touches the disk.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise UnsupportedFormatError(f"unsupported output format '{shown}' for {path}: {_HINT}")
    fmt = _SUFFIX_FORMAT[suffix]
    if not p.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {p.parent} does not exist; create it first")
    prepared = _prepare(raster, fmt, dtype, str(path))
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        _encode_to(prepared, fmt, tmp, str(path))
        with open(tmp, "rb+") as fh:  # flush to disk so the rename never exposes an empty file after a crash
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as e:
        raise InputError(
            f"cannot write {path}: {_short(e)}; check the directory is writable and has space"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("wrote %s (%s, %d bands, %s)", path, fmt, prepared.pixels.shape[0], prepared.dtype)


def encode_image(raster: Raster, fmt: str, *, dtype: str | None = None, png_level: int = PNG_LEVEL) -> bytes:
    """Encode to "png", "jpeg"/"jpg" or "tiff"/"geotiff" bytes (TIFF keeps georeferencing when present).

    ``png_level`` is the zlib level of PNG output (1 is ~3x faster than the default for ~5-10% more
    bytes; a server answering a client pays the encode on every request)."""
    key = _FMT_ALIASES.get(fmt.lower().lstrip("."))
    if key is None:
        raise UnsupportedFormatError(f"unsupported output format '{fmt}': use png, jpeg, tiff or geotiff")
    prepared = _prepare(raster, key, dtype, f"<{key} bytes>")
    return _encode_to(prepared, key, None, f"<{key} bytes>", png_level=png_level)


def _prepare(raster: Raster, fmt: str, dtype: str | None, name: str) -> _Prepared:
    data = raster.data
    if getattr(data, "ndim", None) != 3 or min(data.shape) < 1:
        raise OutputValidationError(
            f"refusing to write {name}: data must have shape (bands, height, width) with no empty axis; got "
            f"{getattr(data, 'shape', None)}"
        )
    if data.dtype.kind not in "uifb":
        raise OutputValidationError(f"refusing to write {name}: pixel type {data.dtype} is not numeric")
    out_dtype = _output_dtype(raster.dtype, dtype, fmt, name)

    names = raster.band_names if len(raster.band_names) == raster.bands else _default_band_names(raster.bands)
    if fmt in ("png", "jpeg"):
        if raster.bands == 2:
            raise InputError(
                f"cannot write a 2-band image as {_FORMAT_LABEL[fmt]} ({name}): it holds 1 or 3 bands; "
                "use TIFF"
            )
        keep = 1 if raster.bands == 1 else 3
        if raster.bands > keep:
            logger.warning(
                "%s: %s keeps only the first 3 bands; dropping %s (write TIFF to keep them)",
                name,
                _FORMAT_LABEL[fmt],
                ", ".join(names[keep:]),
            )
        data = data[:keep]
        names = names[:keep]

    # One reduction (a NaN or an infinity always reaches the sum); the exact count only when it fails,
    # since huge finite values can overflow the sum too.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(data)
    bad = 0 if np.isfinite(total) else int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise OutputValidationError(
            f"refusing to write {name}: {bad} non-finite values (NaN/inf) in the output; the model output "
            "is broken"
        )
    pixels = _quantise(data, out_dtype)
    nodata = _output_nodata(raster, out_dtype, name) if fmt == "tiff" else None
    return _Prepared(pixels=pixels, dtype=out_dtype, band_names=names, profile=raster.profile, nodata=nodata)


def _output_dtype(source: str, requested: str | None, fmt: str, name: str) -> str:
    allowed = _OUTPUT_DTYPES[fmt]
    if requested is None:
        chosen = source if source in ("uint8", "uint16") else "uint8"
        if chosen not in allowed:
            logger.info("%s: %s is 8-bit only; writing uint8 instead of %s", name, _FORMAT_LABEL[fmt], chosen)
            chosen = "uint8"
        return chosen
    if requested not in allowed:
        raise InputError(
            f"cannot write {name} as {_FORMAT_LABEL[fmt]} with dtype '{requested}': it takes "
            f"{', '.join(allowed)}; use TIFF for other types"
        )
    return requested


def _quantise(data: np.ndarray, dtype: str) -> np.ndarray:
    """``[0, 1]`` floats -> ``dtype`` (clipped, rounded half to even like ``np.rint``). Through torch:
    numpy's clip on a multi-megapixel float32 array took 1-30 ms depending on the values (measured),
    torch's clamp/round a steady ~2 ms on 2 threads."""
    import torch

    values = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).clamp(0.0, 1.0)
    if dtype == "float32":
        return values.numpy()
    return values.mul_(float(np.iinfo(dtype).max)).round_().numpy().astype(dtype)


def _output_nodata(raster: Raster, out_dtype: str, name: str) -> float | None:
    """nodata is stored in source-dtype units; rescale it when the output dtype differs."""
    if raster.profile is None or raster.profile.nodata is None:
        return None
    value = raster.profile.nodata
    if raster.dtype == out_dtype:
        return value
    src_max = _dtype_max(raster.dtype)
    dst_max = _dtype_max(out_dtype)
    if not np.isfinite(value):
        if out_dtype == "float32":
            return value
        logger.debug("%s: nodata %s cannot be stored as %s; dropping it", name, value, out_dtype)
        return None
    scaled = value / src_max * dst_max
    if out_dtype != "float32":
        scaled = float(np.rint(scaled))
        if not 0 <= scaled <= dst_max:
            logger.debug("%s: nodata %s is outside %s; dropping it", name, value, out_dtype)
            return None
    return scaled


def _dtype_max(name: str) -> float:
    """The value 1.0 maps to: the integer max, or 1 for floats (and unknown names)."""
    try:
        dt = np.dtype(name)
    except TypeError:
        return 1.0
    return float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0


def _encode_to(
    prepared: _Prepared, fmt: str, target: Path | None, name: str, *, png_level: int = PNG_LEVEL
) -> bytes:
    """Write to ``target`` (returns b"") or, when target is None, return the encoded bytes."""
    with _encoder_errors(name, to_disk=target is not None):
        if fmt == "png":
            data = png_bytes(prepared.pixels, level=png_level)
            if target is None:
                return data
            target.write_bytes(data)
            return b""
        if fmt == "tiff":
            return _encode_geotiff(prepared, target)
        return _encode_pillow(prepared, fmt, target)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def deflate(data: Any, level: int) -> bytes:
    """A zlib stream of ``data``: ISA-L for levels 1-3 (measured on a 1024^2 RGB aerial PNG: 8 ms and
    1.99 MB against zlib level 1's 48 ms and 2.17 MB), zlib for level 0 (stored) and 4-9."""
    if isal_zlib is not None and 1 <= level <= 3:
        return bytes(isal_zlib.compress(data, level))
    return zlib.compress(data, level)


def png_bytes(pixels: np.ndarray, *, level: int = PNG_LEVEL) -> bytes:
    """A PNG of ``(bands, H, W)`` uint8 or uint16 pixels (1 band: grey, 3: RGB).

    Every row uses PNG's "Up" filter (difference to the row above, one vectorised subtraction):
    on aerial imagery it compresses as well as Pillow's per-row adaptive filter choice at a third of
    the time, and it is the same for 8 and 16 bits (16-bit samples are big-endian bytes)."""
    bands, height, width = pixels.shape
    if bands not in (1, 3) or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG takes 1 or 3 bands of uint8/uint16, got {bands} of {pixels.dtype}")
    depth = 8 * pixels.dtype.itemsize
    # Band by band into the interleaved layout: ~9x faster than a contiguous copy of a moved axis.
    interleaved = np.empty((height, width, bands), ">u2" if depth == 16 else np.uint8)
    for band in range(bands):
        interleaved[..., band] = pixels[band]
    rows = interleaved.view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "Up"
    filtered[0, 1:] = rows[0]  # the row above the first one is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256, as PNG specifies
    header = struct.pack(">IIBBBBB", width, height, depth, 0 if bands == 1 else 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", deflate(filtered.data, level)),
            _png_chunk(b"IEND", b""),
        )
    )


@contextmanager
def _encoder_errors(name: str, *, to_disk: bool) -> Iterator[None]:
    try:
        yield
    except (HNDSRError, MemoryError):
        raise
    except Exception as e:
        hint = "; check the directory is writable and has space" if to_disk else ""
        raise InputError(f"cannot write {name}: {_short(e)}{hint}") from e


def _encode_pillow(prepared: _Prepared, fmt: str, target: Path | None) -> bytes:
    pixels = prepared.pixels
    im = Image.fromarray(
        pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    )
    options: dict[str, object] = {}
    if fmt == "jpeg":
        options = {"quality": _JPEG_QUALITY, "subsampling": 0}  # 4:4:4: keep the detail SR produced
    if target is not None:
        im.save(target, format=_FORMAT_LABEL[fmt], **options)
        return b""
    buf = io.BytesIO()
    im.save(buf, format=_FORMAT_LABEL[fmt], **options)
    return buf.getvalue()


_GTIFF_BLOCK = 256


def _gtiff_profile(
    count: int, height: int, width: int, dtype: str, geo: GeoInfo | None, nodata: float | None
) -> dict[str, object]:
    profile: dict[str, object] = {"width": width, "height": height, "count": count, "dtype": dtype}
    profile.update(driver="GTiff", compress="deflate", bigtiff="IF_SAFER")
    profile["predictor"] = 3 if dtype == "float32" else 2
    if count >= 3:
        # Without this GDAL marks the 4th band of an RGB file as alpha, which would hide NIR.
        profile["photometric"] = "RGB"
    if width >= 2 * _GTIFF_BLOCK and height >= 2 * _GTIFF_BLOCK:
        profile.update(tiled=True, blockxsize=_GTIFF_BLOCK, blockysize=_GTIFF_BLOCK)
    if geo is not None:
        profile["crs"] = CRS.from_user_input(geo.crs) if geo.crs else None
        profile["transform"] = Affine(*geo.transform)
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def _encode_geotiff(prepared: _Prepared, target: Path | None) -> bytes:
    count, height, width = prepared.pixels.shape
    profile = _gtiff_profile(count, height, width, prepared.dtype, prepared.profile, prepared.nodata)
    # PAM off: no .aux.xml sidecar next to the temporary file (it would be orphaned by the rename).
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if target is not None:
            with rasterio.open(target, "w", **profile) as dst:
                _fill(dst, prepared)
            return b""
        with MemoryFile() as mf:
            with mf.open(**profile) as dst:
                _fill(dst, prepared)
            return bytes(mf.read())


def _fill(dst: rasterio.io.DatasetWriter, prepared: _Prepared) -> None:
    dst.write(prepared.pixels)
    dst.descriptions = prepared.band_names


# ---------------------------------------------------------------------------------------------- streaming


class GeoTIFFRowWriter:
    """Writes a GeoTIFF from float rows ``(bands, n, width)`` in [0, 1] arriving top to bottom, so an
    output far larger than memory can be written; the file equals what :func:`write_image` writes
    for the same raster (same profile, validation, quantisation, band names), atomically.

    ``like`` is the raster the output derives from: its source dtype picks the output dtype (or pass
    ``dtype``) and its nodata is rescaled like :func:`write_image` does; ``profile`` is the output's
    georeferencing. Rows are buffered up to whole 256-row block strips, so every compressed block is
    written once. Use as a context manager: the file appears only when the block exits cleanly.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: int,
        height: int,
        width: int,
        like: Raster,
        profile: GeoInfo | None,
        band_names: tuple[str, ...],
        dtype: str | None = None,
    ) -> None:
        p = Path(path)
        if p.suffix.lower() not in (".tif", ".tiff"):
            raise UnsupportedFormatError(f"streamed output must be a .tif/.tiff GeoTIFF, not {path}")
        if not p.parent.is_dir():
            raise InputError(f"cannot write {path}: directory {p.parent} does not exist; create it first")
        self.path, self.name = p, str(path)
        self.bands, self.height, self.width = bands, height, width
        self.dtype = _output_dtype(like.dtype, dtype, "tiff", self.name)
        nodata = _output_nodata(like, self.dtype, self.name)
        self.profile = _gtiff_profile(bands, height, width, self.dtype, profile, nodata)
        self.band_names = band_names if len(band_names) == bands else _default_band_names(bands)
        self.strip = _GTIFF_BLOCK
        self.tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
        self.rows_written = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._dst: Any = None
        self._env: Any = None

    def __enter__(self) -> GeoTIFFRowWriter:
        self._env = rasterio.Env(GDAL_PAM_ENABLED="NO")
        self._env.__enter__()
        try:
            with warnings.catch_warnings(), _encoder_errors(self.name, to_disk=True):
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dst = rasterio.open(self.tmp, "w", **self.profile)
        except BaseException:
            self._env.__exit__(None, None, None)
            self.tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, y0: int, rows: np.ndarray) -> None:
        """Rows ``y0 .. y0 + n`` of every band, float; they must follow the rows written before."""
        if y0 != self.rows_written + self._pending_rows:
            raise ValueError(
                f"rows must arrive in order: expected row {self.rows_written + self._pending_rows}, got {y0}"
            )
        if rows.shape[0] != self.bands or rows.shape[2] != self.width:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.bands} x ... x {self.width}")
        if not np.isfinite(rows).all():
            bad = int(np.size(rows) - np.count_nonzero(np.isfinite(rows)))
            raise OutputValidationError(
                f"refusing to write {self.name}: {bad} non-finite values (NaN/inf) in the output; the model "
                "output is broken"
            )
        self._pending.append(_quantise(rows, self.dtype))
        self._pending_rows += rows.shape[1]
        if self._pending_rows >= self.strip:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._pending_rows:
            return
        pending = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = pending.shape[1] if final else pending.shape[1] // self.strip * self.strip
        window = rasterio.windows.Window(0, self.rows_written, self.width, n)
        with _encoder_errors(self.name, to_disk=True):
            self._dst.write(pending[:, :n], window=window)
        self.rows_written += n
        rest = pending[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._flush(final=True)
                if self.rows_written != self.height:
                    raise OutputValidationError(
                        f"refusing to write {self.name}: only {self.rows_written} of {self.height} rows "
                        "were rendered"
                    )
                with _encoder_errors(self.name, to_disk=True):
                    self._dst.descriptions = self.band_names
                    dst, self._dst = self._dst, None
                    dst.close()
                try:
                    with open(self.tmp, "rb+") as fh:
                        os.fsync(fh.fileno())
                    os.replace(self.tmp, self.path)
                except OSError as e:
                    raise InputError(
                        f"cannot write {self.name}: {_short(e)}; check the directory is writable and has "
                        "space"
                    ) from e
        finally:
            if self._dst is not None:
                try:
                    self._dst.close()
                except Exception:  # already failing: the original error is the one to report
                    logger.debug("closing %s after a failure also failed", self.tmp, exc_info=True)
                self._dst = None
            self.tmp.unlink(missing_ok=True)
            self._env.__exit__(None, None, None)
