"""Generated raw image sets for the data tests: clean sets, a deliberately broken set, test params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from synthetic import synthetic_aerial

from hndsr.config import Params, parse_params

TILE = 48  # small tiles keep prepare fast; a multiple of 12 keeps x2/x3/x4 LR sizes whole


def data_params(**overrides: Any) -> Params:
    values: dict[str, Any] = {
        "prepare.tile_size": TILE,
        "prepare.scales": [2, 3, 4],
        "data.val_fraction": 0.2,
        "data.test_fraction": 0.2,
        "data.patch_size": TILE,
    }
    values.update(overrides)
    return parse_params({}, overrides=values)


def write_clean_set(root: Path, n: int = 12, size: tuple[int, int] = (104, 100)) -> list[Path]:
    """``n`` distinct aerial-like PNGs (2 x 2 tiles of 48 px each), in two sub-folders."""
    paths = []
    for i in range(n):
        folder = root / ("fields" if i % 2 else "towns")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(synthetic_aerial(size, seed=100 + i)).save(path)
        paths.append(path)
    return paths


def write_geotiff(
    path: Path, *, bands: int = 4, dtype: str = "uint16", size: int = 100, nodata: float | None = 0
) -> Path:
    rgb = synthetic_aerial((size, size), seed=7).astype(np.float32) / 255.0
    nir = rgb.mean(axis=2, keepdims=True)
    data = np.concatenate([rgb, nir], axis=2)[..., :bands]
    scale = np.iinfo(dtype).max
    pixels = np.moveaxis(np.clip(data * scale, 1, scale).astype(dtype), -1, 0)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": dtype,
        "crs": "EPSG:26914",
        "transform": from_origin(485000.0, 5209000.0, 1.0, 1.0),
        "nodata": nodata,
        "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
        dst.update_tags(ACQUISITIONDATE="2018-07-16", SENSOR="NAIP ADS100")
    return path


def write_broken_set(root: Path) -> dict[str, Path]:
    """Good images plus one file of each kind of trouble; returns the trouble makers by name."""
    write_clean_set(root, n=6)
    good = root / "towns" / "img_00.png"
    bad = {
        "truncated_png": root / "truncated.png",
        "truncated_jpeg": root / "truncated.jpg",
        "empty": root / "empty.png",
        "unsupported": root / "scan.bmp",
        "duplicate": root / "towns" / "img_00_copy.png",  # sorts after the original
        "blank": root / "blank.png",
        "black": root / "black.png",
        "too_small": root / "tiny.png",
        "two_bands": root / "two_bands.tif",
    }
    data = good.read_bytes()
    bad["truncated_png"].write_bytes(data[: len(data) // 2])
    jpeg = root / "full.jpg"
    Image.fromarray(synthetic_aerial((100, 100), seed=55)).save(jpeg, quality=90)
    bad["truncated_jpeg"].write_bytes(jpeg.read_bytes()[:1500])
    jpeg.unlink()
    bad["empty"].write_bytes(b"")
    Image.fromarray(synthetic_aerial((100, 100), seed=56)).save(bad["unsupported"])
    bad["duplicate"].write_bytes(data)
    Image.new("RGB", (100, 100), (128, 128, 128)).save(bad["blank"])  # flat grey: not nodata, but blank
    Image.new("RGB", (100, 100), (0, 0, 0)).save(bad["black"])  # all fill value: all nodata
    Image.fromarray(synthetic_aerial((30, 40), seed=57)).save(bad["too_small"])
    with rasterio.open(
        bad["two_bands"], "w", driver="GTiff", width=64, height=64, count=2, dtype="uint8"
    ) as dst:
        dst.write(np.full((2, 64, 64), 100, np.uint8))
    return bad
