"""Writing images: every writer validates values first (non-finite -> error), clips to [0, 1], rounds
to the output dtype and writes atomically. PNG is written by :func:`png_bytes` (numpy + ISA-L/zlib
deflate), JPEG by Pillow, TIFF/GeoTIFF by rasterio."""

from __future__ import annotations

import io
import logging
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

try:  # ISA-L deflate: ~6x faster than zlib at levels 1-3, standard zlib streams (any PNG reader)
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps the writer working without it
    isal_zlib = None  # type: ignore[assignment]

from hndsr.errors import (
    HNDSRError,
    InputError,
    OutputValidationError,
    UnsupportedFormatError,
)
from hndsr.raster import (
    FORMAT_HINT,
    FORMAT_LABEL,
    SUFFIX_FORMAT,
    SUPPORTED_SUFFIXES,
    GeoInfo,
    Raster,
    default_band_names,
    short_error,
)

logger = logging.getLogger(__name__)

_FMT_ALIASES = {
    "png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "tiff": "tiff",
    "tif": "tiff",
    "geotiff": "tiff",
    "gtiff": "tiff",
}
_OUTPUT_DTYPES = {"png": ("uint8", "uint16"), "jpeg": ("uint8",), "tiff": ("uint8", "uint16", "float32")}
_JPEG_QUALITY = 95
PNG_LEVEL = 6  # zlib level of PNG output: the usual default


@dataclass
class _Prepared:
    pixels: np.ndarray  # (bands, H, W) in the output dtype
    dtype: str
    band_names: tuple[str, ...]
    profile: GeoInfo | None
    nodata: float | None


def write_image(path: str | Path, raster: Raster, *, dtype: str | None = None, cog: bool = True) -> None:
    """Write by suffix (.png, .jpg/.jpeg, .tif/.tiff), atomically: on failure no output is left behind.
    TIFF is a Cloud-Optimized GeoTIFF (:mod:`hndsr.cog`) unless ``cog=False``.

    ``dtype`` defaults to the raster's source dtype when it is uint8/uint16, else uint8. TIFF also takes
    "float32". Non-finite values raise OutputValidationError before anything touches the disk.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise UnsupportedFormatError(f"unsupported output format '{shown}' for {path}: {FORMAT_HINT}")
    fmt = SUFFIX_FORMAT[suffix]
    if not p.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {p.parent} does not exist; create it first")
    prepared = _prepare(raster, fmt, dtype, str(path))
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        _encode_to(prepared, fmt, tmp, str(path), cog=cog)
        with open(tmp, "rb+") as fh:  # flush to disk so the rename never exposes an empty file after a crash
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as e:
        raise InputError(
            f"cannot write {path}: {short_error(e)}; check the directory is writable and has space"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("wrote %s (%s, %d bands, %s)", path, fmt, prepared.pixels.shape[0], prepared.dtype)


def encode_image(
    raster: Raster, fmt: str, *, dtype: str | None = None, png_level: int = PNG_LEVEL, cog: bool = True
) -> bytes:
    """Encode to "png", "jpeg"/"jpg" or "tiff"/"geotiff" bytes (TIFF keeps georeferencing when present
    and is a Cloud-Optimized GeoTIFF unless ``cog=False``).

    ``png_level`` is the zlib level of PNG output (1 is ~3x faster than the default for ~5-10% more
    bytes; a server answering a client pays the encode on every request)."""
    key = _FMT_ALIASES.get(fmt.lower().lstrip("."))
    if key is None:
        raise UnsupportedFormatError(f"unsupported output format '{fmt}': use png, jpeg, tiff or geotiff")
    prepared = _prepare(raster, key, dtype, f"<{key} bytes>")
    return _encode_to(prepared, key, None, f"<{key} bytes>", png_level=png_level, cog=cog)


def _prepare(raster: Raster, fmt: str, dtype: str | None, name: str) -> _Prepared:
    data = raster.data
    if getattr(data, "ndim", None) != 3 or min(data.shape) < 1:
        raise OutputValidationError(
            f"refusing to write {name}: data must have shape (bands, height, width) with no empty axis; got "
            f"{getattr(data, 'shape', None)}"
        )
    if data.dtype.kind not in "uifb":
        raise OutputValidationError(f"refusing to write {name}: pixel type {data.dtype} is not numeric")
    out_dtype = output_dtype(raster.dtype, dtype, fmt, name)

    names = raster.band_names if len(raster.band_names) == raster.bands else default_band_names(raster.bands)
    if fmt in ("png", "jpeg"):
        if raster.bands == 2:
            raise InputError(
                f"cannot write a 2-band image as {FORMAT_LABEL[fmt]} ({name}): it holds 1 or 3 bands; "
                "use TIFF"
            )
        keep = 1 if raster.bands == 1 else 3
        if raster.bands > keep:
            logger.warning(
                "%s: %s keeps only the first 3 bands; dropping %s (write TIFF to keep them)",
                name,
                FORMAT_LABEL[fmt],
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
    pixels = quantise(data, out_dtype)
    nodata = output_nodata(raster, out_dtype, name) if fmt == "tiff" else None
    return _Prepared(pixels=pixels, dtype=out_dtype, band_names=names, profile=raster.profile, nodata=nodata)


def output_dtype(source: str, requested: str | None, fmt: str, name: str) -> str:
    allowed = _OUTPUT_DTYPES[fmt]
    if requested is None:
        chosen = source if source in ("uint8", "uint16") else "uint8"
        if chosen not in allowed:
            logger.info("%s: %s is 8-bit only; writing uint8 instead of %s", name, FORMAT_LABEL[fmt], chosen)
            chosen = "uint8"
        return chosen
    if requested not in allowed:
        raise InputError(
            f"cannot write {name} as {FORMAT_LABEL[fmt]} with dtype '{requested}': it takes "
            f"{', '.join(allowed)}; use TIFF for other types"
        )
    return requested


def quantise(data: np.ndarray, dtype: str) -> np.ndarray:
    """``[0, 1]`` floats -> ``dtype`` (clipped, rounded half to even like ``np.rint``). Through torch:
    its clamp/round takes steady time where numpy's clip varies with the values (benchmarks/NOTES.md)."""
    import torch

    values = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).clamp(0.0, 1.0)
    if dtype == "float32":
        return values.numpy()
    return values.mul_(float(np.iinfo(dtype).max)).round_().numpy().astype(dtype)


def output_nodata(raster: Raster, out_dtype: str, name: str) -> float | None:
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
    prepared: _Prepared,
    fmt: str,
    target: Path | None,
    name: str,
    *,
    png_level: int = PNG_LEVEL,
    cog: bool = True,
) -> bytes:
    """Write to ``target`` (returns b"") or, when target is None, return the encoded bytes."""
    with encoder_errors(name, to_disk=target is not None):
        if fmt == "png":
            data = png_bytes(prepared.pixels, level=png_level)
            if target is None:
                return data
            target.write_bytes(data)
            return b""
        if fmt == "tiff":
            return _encode_geotiff(prepared, target, cog=cog)
        return _encode_pillow(prepared, fmt, target)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def deflate(data: Any, level: int) -> bytes:
    """A zlib stream of ``data``: ISA-L for levels 1-3 (faster and smaller than zlib level 1, measured:
    benchmarks/NOTES.md), zlib for level 0 (stored) and 4-9."""
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
def encoder_errors(name: str, *, to_disk: bool) -> Iterator[None]:
    try:
        yield
    except (HNDSRError, MemoryError):
        raise
    except Exception as e:
        hint = "; check the directory is writable and has space" if to_disk else ""
        raise InputError(f"cannot write {name}: {short_error(e)}{hint}") from e


def _encode_pillow(prepared: _Prepared, fmt: str, target: Path | None) -> bytes:
    pixels = prepared.pixels
    im = Image.fromarray(
        pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    )
    options: dict[str, object] = {}
    if fmt == "jpeg":
        options = {"quality": _JPEG_QUALITY, "subsampling": 0}  # 4:4:4: keep the detail SR produced
    if target is not None:
        im.save(target, format=FORMAT_LABEL[fmt], **options)
        return b""
    buf = io.BytesIO()
    im.save(buf, format=FORMAT_LABEL[fmt], **options)
    return buf.getvalue()


GTIFF_BLOCK = 256


def gtiff_profile(
    count: int, height: int, width: int, dtype: str, geo: GeoInfo | None, nodata: float | None
) -> dict[str, object]:
    profile: dict[str, object] = {"width": width, "height": height, "count": count, "dtype": dtype}
    profile.update(driver="GTiff", compress="deflate", bigtiff="IF_SAFER")
    profile["predictor"] = 3 if dtype == "float32" else 2
    if count >= 3:
        # Without this GDAL marks the 4th band of an RGB file as alpha, which would hide NIR.
        profile["photometric"] = "RGB"
    if width >= 2 * GTIFF_BLOCK and height >= 2 * GTIFF_BLOCK:
        profile.update(tiled=True, blockxsize=GTIFF_BLOCK, blockysize=GTIFF_BLOCK)
    if geo is not None:
        profile["crs"] = CRS.from_user_input(geo.crs) if geo.crs else None
        profile["transform"] = Affine(*geo.transform)
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def _encode_geotiff(prepared: _Prepared, target: Path | None, *, cog: bool = True) -> bytes:
    count, height, width = prepared.pixels.shape
    profile = gtiff_profile(count, height, width, prepared.dtype, prepared.profile, prepared.nodata)
    # PAM off: no .aux.xml sidecar next to the temporary file (it would be orphaned by the rename).
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if cog:
            from hndsr.cog import to_cog

            # The plain GeoTIFF in memory first: rio-cogeo builds the overviews and the layout from it.
            with MemoryFile() as plain:
                with plain.open(**profile) as dst:
                    _fill(dst, prepared)
                with plain.open() as src:
                    if target is not None:
                        to_cog(src, target, in_memory=True)
                        return b""
                    with MemoryFile() as out:
                        to_cog(src, out.name, in_memory=True)
                        return bytes(out.read())
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
