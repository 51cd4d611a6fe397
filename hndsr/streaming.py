"""Scene-size GeoTIFF outputs without the output canvas in memory.

:func:`upscale_raster_to_geotiff` is :func:`hndsr.inference.upscale_raster` + :func:`hndsr.image_write.
write_image` for a GeoTIFF, streamed: the engine renders its tiles in plan order (rows of tiles top to
bottom, :meth:`hndsr.inference.Upscaler.upscale_rows`), keeps only the accumulation band later tiles
can still touch, and hands each finished run of output rows to :class:`hndsr.geotiff_stream.GeoTIFFRowWriter`
together with the same rows of the extra bands (e.g. NIR, bicubic: the resampler is exact on windows).
The file holds the same pixels, georeferencing and band names as the in-memory path (tested).

Memory: the input raster (read whole: 1/16 of the output at x4), a band of (tallest tile, 1024 by
default) x (output width) accumulators (16 bytes per pixel), the copies made while dividing, clamping,
carrying bands and quantising at most ``ROW_CHUNK`` (256) rows at a time, a strip of at most 2 x 256
quantised rows, the model's activations on one batch of tiles, and on the diffusion path the
canvas-wide latent noise field (``latent_channels / factor**2`` floats per output pixel: 4 bytes per
output pixel for the release model, times ``1 + steps`` when eta > 0, which :func:`upscale_raster`
never uses) — it is drawn per canvas so that the result stays identical. ``samples`` K >= 2 holds K
such fields (one per draw: ``latent_channels / factor**2 * K`` floats per output pixel) and K draws'
outputs of one batch of tiles; the band is then 4 channels wide instead of 3 (20 bytes per pixel).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hndsr.geotiff_stream import GeoTIFFRowWriter
from hndsr.inference import Upscaler
from hndsr.model_pass import UNCERTAINTY_BAND, check_samples
from hndsr.raster import Raster
from hndsr.resample import check_scale, resize, sr_size
from hndsr.tiling import BandStitcher

__all__ = ["upscale_raster_to_geotiff"]


def upscale_raster_to_geotiff(
    upscaler: Upscaler,
    raster: Raster,
    path: str | Path,
    *,
    scale: float,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
    samples: int = 1,
    dtype: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    band: Callable[[BandStitcher], None] | None = None,
    cog: bool = True,
) -> tuple[int, int]:
    """Write ``upscale_raster(upscaler, raster, ...)`` to the GeoTIFF ``path`` as ``write_image`` would,
    streaming rows; returns the output (height, width). ``band`` receives the engine's accumulation
    band (instrumentation); ``cog=False`` keeps a plain tiled GeoTIFF (no overviews). ``samples`` K >= 2
    appends the uncertainty band last, as ``upscale_raster``."""
    check_scale(scale)
    check_samples(samples, upscaler.model.default_steps if steps is None else steps)  # before any file
    out_h, out_w = sr_size((raster.height, raster.width), scale)
    rgb = _tensor(raster.rgb())  # views of the raster: no second copy of the input
    extra_np = raster.extra_bands()
    extra = None if extra_np is None else _tensor(extra_np)
    profile = None
    if raster.profile is not None:
        profile = raster.profile.scaled(out_w / raster.width, out_h / raster.height)
    rows = upscaler.upscale_rows(
        rgb,
        scale=scale,
        out_size=(out_h, out_w),
        steps=steps,
        strength=strength,
        seed=seed,
        samples=samples,
        progress=progress,
        band=band,
    )
    uncertain = samples > 1
    with GeoTIFFRowWriter(
        path,
        bands=raster.bands + (1 if uncertain else 0),
        height=out_h,
        width=out_w,
        like=raster,
        profile=profile,
        band_names=(*raster.band_names, UNCERTAINTY_BAND) if uncertain else raster.band_names,
        dtype=dtype,
        cog=cog,
    ) as writer:
        for y0, sr in rows:
            sr = sr.cpu()
            parts = [sr[:3]]
            if extra is not None:
                window = slice(y0, y0 + sr.shape[1])
                parts.append(resize(extra, (out_h, out_w), rows=window).clamp(0.0, 1.0))
            if uncertain:
                parts.append(sr[3:])  # last, after the carried bands, as in sr_raster
            writer.write(y0, torch.cat(parts).numpy())
    return out_h, out_w


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it can (read only here), else a copy."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())
