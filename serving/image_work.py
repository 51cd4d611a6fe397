"""One image of a transformer request: its work from validation to the encoded output, and the answer
it gives (the encoded image, its size, tiles, timings and the cycle-consistency PSNR).
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hndsr.image_write import encode_image, png_bytes
from hndsr.inference import sr_raster
from hndsr.raster import Raster
from hndsr.resample import resize
from serving.tile_crops import Canvas, TileSpec
from serving.validation import SRInput


@dataclass
class ImageWork:
    """One image of a request, from validation to the encoded output: its tiles, what came back, timings."""

    inp: SRInput
    raster: Raster
    canvas: Canvas
    tile: int
    specs: list[TileSpec]
    timings_ms: dict[str, float] = field(default_factory=dict)
    sr: torch.Tensor | None = None
    model_version: str = ""
    checkpoint_sha256: str = ""
    model_ms: float = 0.0
    steps: int | None = None
    pixels: np.ndarray | None = None  # the final uint8 pixels, when one 8-bit tile is the output


@dataclass
class PreparedRequest:
    protocol: str
    request_id: str
    images: list[ImageWork]
    started: float
    binary_output: bool = False  # v2: the client asked for the binary tensor extension in the answer


def cycle_psnr(lr: torch.Tensor, sr: torch.Tensor, window: int = 96) -> float:
    """PSNR (dB) of the output downsampled back to the input size against the input, on a central
    window of at most ``window`` x ``window`` input pixels (exactly that window of the whole
    downsample: the resampler computes a window from the rows/cols it needs only)."""
    h, w = lr.shape[-2], lr.shape[-1]
    y0, x0 = max(0, (h - window) // 2), max(0, (w - window) // 2)
    rows, cols = slice(y0, min(h, y0 + window)), slice(x0, min(w, x0 + window))
    back = resize(sr, (h, w), antialias=True, rows=rows, cols=cols).clamp(0.0, 1.0)
    mse = float(torch.mean((back - lr[:, rows, cols]) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


def encode_output(raster: Raster, fmt: str, png_level: int, cog: bool = True) -> bytes:
    """PNG (zlib level ``png_level``: encoding is the largest serving cost after the model) or
    GeoTIFF with georeferencing (Cloud-Optimized unless ``cog`` is false), through the core's writer."""
    return encode_image(raster, "png" if fmt == "png" else "geotiff", png_level=png_level, cog=cog)


def image_result(work: ImageWork, png_level: int) -> dict[str, Any]:
    """One image's answer: the encoded image (base64) and what the client is told of it."""
    assert work.sr is not None
    t0 = time.perf_counter()
    raster, p, c = work.raster, work.inp.params, work.canvas
    fmt = p.output_format
    sr, spread = (work.sr[:3], work.sr[3]) if work.sr.shape[0] > 3 else (work.sr, None)
    # GeoTIFF: the whole stitch, the std (if any) becoming the last band; PNG holds R, G, B only.
    geotiff = fmt == "geotiff"
    out_raster = sr_raster(raster, work.sr if geotiff else sr, (c.out_h, c.out_w), carry_extra=geotiff)
    extra: dict[str, Any] = {}  # the uncertainty's fields; a GeoTIFF's STAC Item
    if spread is not None:
        std = spread.clamp(0.0, 1.0).numpy()
        extra = {"samples": p.samples, "uncertainty_mean": round(float(std.mean(dtype=np.float64)), 6)}
        if not geotiff:
            extra["uncertainty_png_b64"] = base64.b64encode(uncertainty_png(std, png_level)).decode()
    if work.pixels is not None and fmt == "png":
        # What encode_output would write (k/255 quantises back to k), minus two full-image passes.
        encoded = png_bytes(np.ascontiguousarray(work.pixels), level=png_level)
    else:
        encoded = encode_output(out_raster, fmt, png_level, cog=p.cog)
    if fmt == "geotiff":
        extra["stac_item"] = geotiff_item(encoded, work)
    work.timings_ms["encode"] = (time.perf_counter() - t0) * 1000.0
    psnr = cycle_psnr(torch.from_numpy(raster.rgb()), sr)
    return {
        "image_b64": base64.b64encode(encoded).decode("ascii"),
        "format": fmt,
        "width": c.out_w,
        "height": c.out_h,
        "scale": p.scale,
        "steps": work.steps if work.steps is not None else p.steps,
        "seed": p.seed,
        "model_version": work.model_version,
        "tiles": len(work.specs),
        "tile_size": work.tile,
        "cycle_psnr_db": round(psnr, 3),
        "timings_ms": {k: round(v, 2) for k, v in work.timings_ms.items()},
    } | extra


def geotiff_item(encoded: bytes, work: ImageWork) -> dict[str, Any]:
    """The STAC Item of a GeoTIFF answer (read from its header). A response has no address, so the
    data asset's href is ``image.tif``: a client that saves the file points it there
    (``hndsr client sr`` does, writing the Item beside it)."""
    import json

    from rasterio.io import MemoryFile

    from hndsr.stac_items import item_for_output, item_json

    p = work.inp.params
    with MemoryFile(encoded, filename="image.tif") as memory:  # a /vsimem/.../image.tif path
        item = item_for_output(
            memory.name,
            scale=p.scale,
            model_version=work.model_version,
            checkpoint_sha256=work.checkpoint_sha256,
            steps=work.steps if work.steps is not None else int(p.steps or 0),
            seed=p.seed,
            samples=p.samples,
            cog=p.cog,
        )
    doc: dict[str, Any] = json.loads(item_json(item))
    return doc


def uncertainty_png(std: np.ndarray, png_level: int) -> bytes:
    """The per-pixel std ``(H, W)`` as a 16-bit grey PNG, 65535 = a std of 1.0 (pixel values in [0, 1])."""
    return png_bytes(np.rint(np.clip(std, 0.0, 1.0) * 65535.0).astype(np.uint16)[None], level=png_level)
