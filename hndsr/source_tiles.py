"""One source image of ``hndsr prepare`` -> its HR tiles, their LR counterparts and catalog rows, or the
reason it is rejected (never a crash)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hndsr.catalog import lr_column
from hndsr.data import split_of
from hndsr.errors import InputError, UnsupportedFormatError
from hndsr.image_read import read_image
from hndsr.image_stats import INTEGER_DTYPES, nodata_mask, sharpness, tile_stats
from hndsr.image_write import encode_image
from hndsr.raster import SUPPORTED_SUFFIXES, GeoInfo, Raster
from hndsr.resample import lr_size, resize
from hndsr.source_metadata import crs_name, source_metadata

if TYPE_CHECKING:
    from hndsr.prepare import PrepareConfig

# Writes a file under the output folder (relative posix path, bytes) and returns its size.
WriteOutput = Callable[[str, bytes], int]


@dataclass
class Source:
    path: Path
    rel: str  # relative posix path in the source folder
    name: str  # as recorded in the catalog (rel, or the s3:// URI)
    size: int
    mtime_ns: int
    sha256: str = ""
    stac_item: str | None = None  # the STAC Item and asset it came from (``prepare --src item.json``)
    stac_asset: str | None = None


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)  # relative path -> size
    reject: dict[str, Any] | None = None
    dropped_tiles: int = 0


def reject(s: Source, reason: str, detail: str) -> dict[str, Any]:
    return {
        "source": s.name,
        "source_sha256": s.sha256 or None,
        "size_bytes": s.size,
        "reason": reason,
        "detail": detail,
    }


def tile_source(s: Source, config: PrepareConfig, write: WriteOutput) -> Outcome:
    if s.size == 0:
        return Outcome(reject=reject(s, "empty", "the file is empty (0 bytes)"))
    if s.path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return Outcome(
            reject=reject(s, "unsupported", f"'{s.path.suffix or '(no suffix)'}' is not PNG, JPEG or TIFF")
        )
    try:
        raster = read_image(s.path)
    except UnsupportedFormatError as exc:
        return Outcome(reject=reject(s, "unsupported", _strip_path(str(exc), s.path)))
    except InputError as exc:
        return Outcome(reject=reject(s, "corrupt", _strip_path(str(exc), s.path)))
    if raster.bands < 3:
        return Outcome(reject=reject(s, "too_few_bands", f"{raster.bands} band(s); 3+ (R,G,B,...) needed"))
    if raster.dtype not in INTEGER_DTYPES:
        return Outcome(reject=reject(s, "unsupported", f"pixel type {raster.dtype}; 8- or 16-bit needed"))
    t = config.tile_size
    if min(raster.height, raster.width) < t:
        return Outcome(
            reject=reject(
                s, "too_small", f"{raster.width}x{raster.height} px, smaller than the {t} px tile size"
            )
        )
    nodata = nodata_mask(raster)
    if nodata.all():
        return Outcome(reject=reject(s, "all_nodata", "every pixel is nodata"))
    split = split_of(s.sha256, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    sensor, date = source_metadata(s.path)
    base = {
        "source": s.name,
        "source_sha256": s.sha256,
        "split": split,
        "bands": raster.bands,
        "dtype": raster.dtype,
        "sensor": sensor or config.sensor or None,
        "acquisition_date": date,
        "crs": crs_name(raster.profile),
    }
    suffix = ".tif" if raster.profile is not None or raster.bands > 3 else ".png"
    stem = _flat_name(s.rel)
    outcome = Outcome()
    n_y, n_x = raster.height // t, raster.width // t
    off_y, off_x = (raster.height - n_y * t) // 2, (raster.width - n_x * t) // 2  # centred grid
    for y in range(off_y, off_y + n_y * t, t):
        for x in range(off_x, off_x + n_x * t, t):
            mask = nodata[y : y + t, x : x + t]
            fraction = float(mask.mean())
            if fraction >= 1.0 or fraction > config.max_nodata_fraction:
                outcome.dropped_tiles += 1
                continue
            pixels = np.ascontiguousarray(raster.data[:, y : y + t, x : x + t])
            name = f"{stem}_y{y:05d}_x{x:05d}{suffix}"
            hr_rel = f"{split}/hr/{name}"
            hr_bytes = _encode(pixels, raster, _tile_geo(raster.profile, x, y, 1.0, 1.0), suffix)
            outcome.outputs[hr_rel] = write(hr_rel, hr_bytes)
            mean, std = tile_stats(pixels, mask)
            row = {
                "filename": hr_rel,
                **base,
                "tile_y": y,
                "tile_x": x,
                "height": t,
                "width": t,
                "sha256": hashlib.sha256(hr_bytes).hexdigest(),
                "band_mean": mean,
                "band_std": std,
                "sharpness": sharpness(pixels),
                "nodata_fraction": fraction,
            }
            hr_tensor = torch.from_numpy(pixels)
            for scale in config.scales:
                lh, lw = lr_size((t, t), scale)
                lr = resize(hr_tensor, (lh, lw), antialias=True).numpy()
                lr_rel = f"{split}/{lr_column(scale)}/{name}"
                geo = _tile_geo(raster.profile, x, y, lw / t, lh / t)
                outcome.outputs[lr_rel] = write(lr_rel, _encode(lr, raster, geo, suffix))
                row[lr_column(scale)] = lr_rel
            outcome.rows.append(row)
    if not outcome.rows:
        return Outcome(
            reject=reject(
                s,
                "all_nodata",
                f"every {t} px tile is over {config.max_nodata_fraction:.0%} nodata",
            ),
            dropped_tiles=outcome.dropped_tiles,
        )
    return outcome


def _strip_path(message: str, path: Path) -> str:
    return message.replace(str(path), path.name)


def _flat_name(rel: str) -> str:
    """``aGrass/a001.jpg`` -> ``aGrass--a001``: unique per source path, safe as a file name."""
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "--"))


def _tile_geo(geo: GeoInfo | None, x: int, y: int, sx: float, sy: float) -> GeoInfo | None:
    """Georeferencing of the tile at (x, y), resampled by (sx, sy) (1 for HR, < 1 for LR)."""
    if geo is None:
        return None
    a, b, c, d, e, f = geo.transform
    shifted = GeoInfo(
        crs=geo.crs, transform=(a, b, c + a * x + b * y, d, e, f + d * x + e * y), nodata=geo.nodata
    )
    return shifted if sx == 1.0 and sy == 1.0 else shifted.scaled(sx, sy)


def _encode(pixels: np.ndarray, source: Raster, geo: GeoInfo | None, suffix: str) -> bytes:
    tile = Raster(data=pixels, dtype=source.dtype, profile=geo, band_names=source.band_names)
    # Training tiles stay plain GeoTIFFs: too small for overviews, read whole by the data loader.
    return encode_image(tile, "tiff" if suffix == ".tif" else "png", dtype=source.dtype, cog=False)
