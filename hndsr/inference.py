"""The inference engine: LR image -> bicubic canvas -> batched tiles through the model -> stitched SR.

One engine for the CLI, evaluation and the servers. Bicubic upsampling is computed per tile from the
LR rows and columns it needs (exactly equal to the whole-image bicubic), so memory stays bounded by
the tile size plus the output canvas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import numpy as np
import torch

from hndsr.errors import ImageTooSmallError, InputError
from hndsr.model_pass import (
    UNCERTAINTY_BAND,
    autocast_dtype,
    check_samples,
    mean_and_spread,
    noise_fields,
    pick_device,
    render_batch,
    sample_seeds,
    slice_noise,
    validate_output,
)
from hndsr.models.hndsr_model import HNDSR
from hndsr.models.operator import LRInput
from hndsr.raster import Raster
from hndsr.resample import check_scale, resize, sr_size, window_taps
from hndsr.tiling import BandStitcher, Stitcher, Tile, plan_tiles, round_up

logger = logging.getLogger(__name__)

MIN_INPUT_SIDE = 8
MAX_STEPS = 1000
DEFAULT_TILE = 1024  # output pixels: halo + overlap cost (1024 / 928)^2 = 1.2x on large images
DEFAULT_OVERLAP = 32  # output pixels blended between neighbouring tiles
DEFAULT_HALO = 32  # output pixels of context on interior tile sides (>= the effective receptive field)
ROW_CHUNK = 256  # rows handed on at a time when streaming: bounds the copies made while writing them


@dataclass
class InferenceStats:
    tiles: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


class UpscaleOptions(TypedDict, total=False):
    """Keyword options of :meth:`Upscaler.upscale` and :meth:`Upscaler.upscale_rows`; absent ones
    take the model's defaults (steps, strength) or the upscaler's (tile, overlap, halo)."""

    scale: float | None
    out_size: tuple[int, int] | None
    steps: int | None
    strength: float | None
    eta: float  # 0.0
    seed: int  # 0
    samples: int  # 1; K in [2, 16]: K seeded draws -> their mean + the per-pixel std as a 4th channel
    tile: int | None
    overlap: int | None
    halo: int | None
    progress: Callable[[int, int], None] | None  # (tiles_done, tiles_total) after each batch
    stats: InferenceStats | None


@dataclass
class _Job:
    """One image planned for rendering: its tiles, sizes and noise."""

    lr: torch.Tensor
    out_h: int
    out_w: int
    canvas_h: int
    canvas_w: int
    tiles: list[Tile]
    overlap: int
    halo: int
    effective: float
    steps: int
    strength: float
    eta: float
    draws: list[list[torch.Tensor]]  # the canvas noise fields of each draw (one draw unless samples > 1)

    @property
    def channels(self) -> int:
        """R, G, B, plus the uncertainty channel when several draws are combined."""
        return 4 if len(self.draws) > 1 else 3


class Upscaler:
    """Runs an :class:`HNDSR` model over images of any size."""

    def __init__(
        self,
        model: HNDSR,
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        halo: int = DEFAULT_HALO,
        half: bool = False,
    ) -> None:
        self.device = pick_device(str(device) if device is not None else None)
        self.model = model.to(self.device).eval()
        # On CPU one large tile at a time beats a batch of four (the batch's activations fall out of
        # cache; measured: benchmarks/NOTES.md); GPUs want batches.
        default_batch = 4 if self.device.type == "cuda" else 1
        self.batch_size = max(1, batch_size if batch_size is not None else default_batch)
        self.tile = tile
        self.overlap = overlap
        self.halo = halo
        # fp16 autocast only on CUDA when asked; bf16 on CPUs that compute it natively.
        self.half = half and self.device.type == "cuda"
        self.autocast_dtype = autocast_dtype(self.device, half=half)

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, **options: Unpack[UpscaleOptions]) -> torch.Tensor:
        """``lr`` ``(3, h, w)`` in [0, 1] -> SR ``(3, H, W)`` in [0, 1].

        ``out_size`` (H, W) overrides the size implied by ``scale``; the scale the model is
        conditioned on is then the actual ratio. With ``samples`` K >= 2 each tile is rendered K times
        (draw k with the canvas noise of seed ``seed + k``) and the result is ``(4, H, W)``: the mean of
        the draws, then their per-pixel standard deviation (:func:`hndsr.model_pass.mean_and_spread`).
        """
        started = time.perf_counter()
        job = self._plan(lr, options)
        stitcher = Stitcher(
            job.channels,
            job.canvas_h,
            job.canvas_w,
            overlap=job.overlap,
            halo=job.halo,
            device=str(self.device),
        )
        for t, values in self._render(job, options):
            stitcher.add(t, values)
        out = stitcher.result()[:, : job.out_h, : job.out_w].clamp(0.0, 1.0)
        if (stats := options.get("stats")) is not None:
            stats.seconds += time.perf_counter() - started
        return out

    @torch.no_grad()
    def upscale_rows(
        self,
        lr: torch.Tensor,
        *,
        band: Callable[[BandStitcher], None] | None = None,
        **options: Unpack[UpscaleOptions],
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """:meth:`upscale` as a stream of finished output rows ``(y0, (C, n, W))``, top to bottom.

        The rows equal the same rows of :meth:`upscale` exactly (same tiles, batches, noise and
        blending), but only a band of (tallest tile) x (canvas width) accumulators is held instead
        of the whole canvas. The diffusion path's noise is still drawn per canvas in latent space
        (``latent_channels / factor**2`` floats per output pixel, times ``1 + steps`` when eta > 0),
        so that it stays identical; ``samples`` K draws hold K such fields. ``band`` receives the
        :class:`BandStitcher` (instrumentation).
        """
        started = time.perf_counter()
        job = self._plan(lr, options)
        tallest = max(t.height for t in job.tiles)
        stitcher = BandStitcher(
            job.channels,
            job.canvas_h,
            job.canvas_w,
            rows=tallest,
            overlap=job.overlap,
            halo=job.halo,
            device=str(self.device),
        )
        if band is not None:
            band(stitcher)

        def finished(until: int) -> Iterator[tuple[int, torch.Tensor]]:
            while (chunk := stitcher.pop(until, ROW_CHUNK)) is not None:
                y0, rows = chunk
                rows = rows[:, : max(0, job.out_h - y0), : job.out_w]  # canvas padding dropped
                if rows.shape[1]:
                    yield y0, rows.clamp(0.0, 1.0)

        for t, values in self._render(job, options):
            yield from finished(t.y0)
            stitcher.add(t, values)
        yield from finished(job.canvas_h)
        if (stats := options.get("stats")) is not None:
            stats.seconds += time.perf_counter() - started

    def _plan(self, lr: torch.Tensor, options: UpscaleOptions) -> _Job:
        unknown = options.keys() - UpscaleOptions.__optional_keys__
        if unknown:  # a misspelt option is an error, as it was with explicit keyword parameters
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        scale, out_size = options.get("scale"), options.get("out_size")
        steps, strength = options.get("steps"), options.get("strength")
        eta, seed = options.get("eta", 0.0), options.get("seed", 0)
        samples = options.get("samples", 1)
        tile, overlap, halo = options.get("tile"), options.get("overlap"), options.get("halo")
        if lr.ndim != 3 or lr.shape[0] != 3:
            raise InputError(f"expected an RGB image (3, h, w), got shape {tuple(lr.shape)}")
        h, w = int(lr.shape[1]), int(lr.shape[2])
        if min(h, w) < MIN_INPUT_SIDE:
            raise ImageTooSmallError(
                f"input image {h}x{w} px is too small: each side needs at least {MIN_INPUT_SIDE} px"
            )
        if not bool(torch.isfinite(lr).all()):
            raise InputError("input image contains non-finite values (NaN or Inf): fix or mask them first")
        if out_size is None:
            if scale is None:
                raise InputError("give a scale or an output size")
            out_size = sr_size((h, w), check_scale(scale))
        out_h, out_w = out_size
        effective = check_scale(min(max(0.5 * (out_h / h + out_w / w), 2.0), 4.0)) if scale is None else scale
        steps = self.model.default_steps if steps is None else steps
        strength = self.model.default_strength if strength is None else strength
        if not 0 <= steps <= MAX_STEPS:
            raise InputError(f"steps must be in [0, {MAX_STEPS}] (0 = deterministic path), got {steps}")
        check_samples(samples, steps)

        factor = self.model.factor
        canvas_h, canvas_w = round_up(out_h, factor), round_up(out_w, factor)
        tile = self.tile if tile is None else tile
        overlap = self.overlap if overlap is None else overlap
        halo = self.halo if halo is None else halo
        tiles = plan_tiles(canvas_h, canvas_w, tile=tile, overlap=overlap, halo=halo, align=factor)
        return _Job(
            lr=lr.to(self.device, torch.float32),
            out_h=out_h,
            out_w=out_w,
            canvas_h=canvas_h,
            canvas_w=canvas_w,
            tiles=tiles,
            overlap=overlap,
            halo=halo,
            effective=float(effective),
            steps=steps,
            strength=strength,
            eta=eta,
            draws=[
                self._noise(canvas_h // factor, canvas_w // factor, steps, eta, s)
                for s in sample_seeds(seed, samples)
            ],
        )

    def _render(self, job: _Job, options: UpscaleOptions) -> Iterator[tuple[Tile, torch.Tensor]]:
        """Each tile's validated model output, in plan order, batch by batch: ``(3, th, tw)``, or with
        several draws their mean and spread ``(4, th, tw)``."""
        progress, stats = options.get("progress"), options.get("stats")
        tiles, f = job.tiles, self.model.factor
        model_seconds = 0.0
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            up = torch.stack([self._bicubic_tile(job.lr, t, job.out_h, job.out_w) for t in batch])
            lr = [self._lr_tile(job, t) for t in batch] if self.model.needs_lr else None
            t0 = time.perf_counter()
            outputs = []
            for noise in job.draws:
                sr = render_batch(
                    self.model,
                    up,
                    job.effective,
                    steps=job.steps,
                    strength=job.strength,
                    eta=job.eta,
                    initial_noise=slice_noise(noise[0], batch, f).to(self.device) if noise else None,
                    step_noise=[slice_noise(field_, batch, f).to(self.device) for field_ in noise[1:]],
                    lr=lr,
                    micro_batch=len(batch),
                    dtype=self.autocast_dtype,
                )
                outputs.append(validate_output(sr))  # each draw clamped: draw 0 is the single-sample output
            model_seconds += time.perf_counter() - t0
            sr = outputs[0] if len(outputs) == 1 else mean_and_spread(torch.stack(outputs))
            yield from zip(batch, sr, strict=True)
            if progress is not None:
                progress(min(start + len(batch), len(tiles)), len(tiles))
        if stats is not None:
            stats.tiles += len(tiles)
            stats.stage_seconds["model"] = stats.stage_seconds.get("model", 0.0) + model_seconds

    def _bicubic_tile(self, lr: torch.Tensor, t: Tile, out_h: int, out_w: int) -> torch.Tensor:
        # Rows/cols past the output size (canvas padding to the latent factor) replicate the last one.
        rows = torch.arange(t.y0, t.y1).clamp(max=out_h - 1)
        cols = torch.arange(t.x0, t.x1).clamp(max=out_w - 1)
        return resize(lr, (out_h, out_w), rows=rows, cols=cols)

    def _lr_tile(self, job: _Job, t: Tile) -> LRInput:
        """The LR crop tile ``t``'s bicubic reads, with the taps that map it onto the tile."""
        lr_h, lr_w = int(job.lr.shape[1]), int(job.lr.shape[2])
        r0, r1, rows = window_taps(lr_h, job.out_h, t.y0, t.y1)
        c0, c1, cols = window_taps(lr_w, job.out_w, t.x0, t.x1)
        return LRInput(job.lr[None, :, r0:r1, c0:c1], rows, cols)

    def _noise(self, lh: int, lw: int, steps: int, eta: float, seed: int) -> list[torch.Tensor]:
        if steps == 0:
            return []
        # On the CPU: slices go to the device batch by batch (a canvas of noise stays off the GPU).
        return noise_fields(seed, self.model.latent_channels, lh, lw, 1 + (steps if eta > 0 else 0))


def upscale_raster(
    upscaler: Upscaler,
    raster: Raster,
    *,
    scale: float,
    steps: int | None = None,
    strength: float | None = None,
    seed: int = 0,
    samples: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Raster:
    """Super-resolve the R,G,B bands with the model; bands beyond them (e.g. NIR) are upsampled
    bicubically and carried in their original order. Georeferencing keeps its CRS and origin, with
    the pixel size divided by the actual scale of each axis. ``progress(tiles_done, tiles_total)``
    is called after each batch of tiles. ``samples`` K >= 2: R,G,B are the mean of K seeded draws and
    their per-pixel std is appended as a last band named :data:`UNCERTAINTY_BAND`."""
    check_scale(scale)
    rgb = torch.from_numpy(raster.rgb().copy())
    out_size = sr_size((raster.height, raster.width), scale)
    sr = upscaler.upscale(
        rgb,
        scale=scale,
        out_size=out_size,
        steps=steps,
        strength=strength,
        seed=seed,
        samples=samples,
        progress=progress,
    ).cpu()
    return sr_raster(raster, sr, out_size)


def sr_raster(
    source: Raster, sr: torch.Tensor, out_size: tuple[int, int], *, carry_extra: bool = True
) -> Raster:
    """The output raster of ``source``'s super-resolved R,G,B ``sr`` (3, H, W): bands beyond R,G,B
    upsampled bicubically and carried (unless ``carry_extra`` is off, e.g. for PNG), georeferencing with
    the pixel size divided by the actual scale of each axis, the band names kept. A fourth channel of
    ``sr`` (the std of K draws) becomes the last band, :data:`UNCERTAINTY_BAND`, after the carried ones."""
    bands = [sr[:3]]
    extra = source.extra_bands() if carry_extra else None
    if extra is not None:
        bands.append(resize(torch.from_numpy(np.ascontiguousarray(extra)), out_size).clamp(0.0, 1.0))
    names = source.band_names[: 3 + (0 if extra is None else extra.shape[0])]
    if sr.shape[0] > 3:
        bands.append(sr[3:4])
        names = (*names, UNCERTAINTY_BAND)
    data = torch.cat(bands).numpy() if len(bands) > 1 else sr.numpy()
    profile = None
    if source.profile is not None:
        profile = source.profile.scaled(out_size[1] / source.width, out_size[0] / source.height)
    return Raster(data=data, dtype=source.dtype, profile=profile, band_names=names)
