"""Reading images: PNG/JPEG through Pillow, TIFF/GeoTIFF through rasterio, each into a :class:`Raster`.

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
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import rasterio
import rasterio.windows
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile

from hndsr.errors import (
    HNDSRError,
    InputError,
    UnsupportedFormatError,
)
from hndsr.raster import (
    DEFAULT_MAX_PIXELS,
    FORMAT_HINT,
    FORMAT_LABEL,
    IDENTITY_TRANSFORM,
    SUFFIX_FORMAT,
    SUPPORTED_SUFFIXES,
    GeoInfo,
    Raster,
    default_band_names,
    short_error,
    to_unit_float,
)

logger = logging.getLogger(__name__)

# Memory scales with bands too: the budget is max_pixels of up to this many bands, so a 13-band scene gets a
# proportionally smaller pixel budget.
_BAND_BUDGET = 4


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Raster:
    """Read a PNG, JPEG, TIFF or GeoTIFF file. Raises InputError (or a subclass) for anything unusable."""
    p = Path(path)
    name = str(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise UnsupportedFormatError(f"unsupported image format '{shown}' for {name}: {FORMAT_HINT}")
    if not p.exists():
        raise InputError(f"no such file: {name}; check the path")
    if not p.is_file():
        raise InputError(f"{name} is not a regular file; pass an image file")
    try:
        with open(p, "rb") as fp:
            head = fp.read(32)
            kind = _sniff(head, name)
            _note_mismatch(kind, SUFFIX_FORMAT[suffix], name)
            if _needs_gdal_png(kind, head):
                return _read_gdal(lambda: rasterio.open(p, driver="PNG"), name, max_pixels, kind, head)
            if kind == "tiff":
                return _read_gdal(lambda: rasterio.open(p, driver="GTiff"), name, max_pixels, kind, head)
            fp.seek(0)
            return _read_pillow(fp, name, max_pixels, kind)
    except OSError as e:  # open/read of the file itself (permissions, I/O); decoder errors are wrapped below
        raise InputError(f"cannot read {name}: {short_error(e)}; check the file is readable") from e


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
        f"format; {FORMAT_HINT}"
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
        label = FORMAT_LABEL.get(kind, kind)
        raise InputError(
            f"cannot decode {name} as {label} ({short_error(e)}): the file is corrupt or truncated; "
            "re-export or re-download it"
        ) from e


def _check_size(width: int, height: int, bands: int, max_pixels: int, name: str) -> None:
    pixels = width * height
    if pixels > max_pixels or pixels * max(bands, 1) > max_pixels * _BAND_BUDGET:
        raise InputError(
            f"{name} is {width}x{height} pixels with {bands} bands, over the limit of {max_pixels:,} pixels "
            f"(proportionally fewer above {_BAND_BUDGET} bands): tile large scenes into smaller images or "
            "use the async batch path"
        )


# Float pixels are read as they are (integers are divided by their type's max): they must already be
# values in [0, 1]. A little overshoot (resampled or compressed float data) is harmless to the model.
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
    return Raster(data=data, dtype=dtype, profile=None, band_names=default_band_names(data.shape[0]))


def _require_complete(fp: BinaryIO, kind: str, name: str) -> None:
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(max(0, size - 65536))
    tail = fp.read()
    fp.seek(0)
    end_marker = b"IEND" if kind == "png" else b"\xff\xd9"
    if end_marker not in tail:
        raise InputError(
            f"cannot decode {name} as {FORMAT_LABEL[kind]}: the file is truncated (no end marker); "
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
    if src.crs is None and transform == IDENTITY_TRANSFORM:
        return None
    crs = src.crs.to_wkt() if src.crs is not None else None
    nodata = None if src.nodata is None else float(src.nodata)
    return GeoInfo(crs=crs, transform=transform, nodata=nodata)


def _band_names(descriptions: tuple[str | None, ...]) -> tuple[str, ...]:
    defaults = default_band_names(len(descriptions))
    if not any(descriptions):
        return defaults
    # Partly described files: keep what is there and number the rest.
    return tuple(d if d else f"band{i + 1}" for i, d in enumerate(descriptions))
