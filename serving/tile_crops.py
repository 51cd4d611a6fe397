"""Tile geometry shared by transformer and predictor, built on the core's public tiling and resampling.

The transformer plans tiles with :func:`hndsr.tiling.plan_tiles` (output pixels, aligned to the
model's latent factor, halo + overlap) and sends each tile as the **LR crop** its bicubic upsample
needs, plus the crop's origin. The predictor recomputes that tile's bicubic input exactly — the same
separable taps (:func:`hndsr.resample.taps`) and the same banded matmul as
:func:`hndsr.resample.resize` — so the LR crop is all that travels: about ``scale**2`` times fewer
bytes than the bicubic tile itself (16x at x4), and the result equals the in-process engine's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hndsr.models.operator import LRInput
from hndsr.resample import Taps, apply_taps, sr_size, window_taps
from hndsr.tiling import Tile, plan_tiles, round_up

GEOMETRY_FIELDS = ("y0", "x0", "y1", "x1", "r0", "c0", "rows", "cols")


@dataclass(frozen=True)
class TileSpec:
    """A tile in output pixels and the LR crop ``[r0, r0+rows) x [c0, c0+cols)`` its bicubic needs."""

    tile: Tile
    r0: int
    c0: int
    rows: int
    cols: int

    def as_row(self) -> list[int]:
        t = self.tile
        return [t.y0, t.x0, t.y1, t.x1, self.r0, self.c0, self.rows, self.cols]

    @classmethod
    def from_row(cls, row: list[int] | np.ndarray) -> TileSpec:
        y0, x0, y1, x1, r0, c0, rows, cols = (int(v) for v in row)
        return cls(Tile(y0, x0, y1, x1), r0, c0, rows, cols)


@dataclass(frozen=True)
class Canvas:
    """Sizes of one super-resolution job: LR input, requested output, padded canvas (multiple of
    the latent factor)."""

    lr_h: int
    lr_w: int
    out_h: int
    out_w: int
    canvas_h: int
    canvas_w: int

    @classmethod
    def for_scale(cls, lr_h: int, lr_w: int, scale: float, factor: int) -> Canvas:
        out_h, out_w = sr_size((lr_h, lr_w), scale)
        return cls(lr_h, lr_w, out_h, out_w, round_up(out_h, factor), round_up(out_w, factor))

    def as_params(self) -> dict[str, int]:
        return {
            "lr_height": self.lr_h,
            "lr_width": self.lr_w,
            "out_height": self.out_h,
            "out_width": self.out_w,
            "canvas_height": self.canvas_h,
            "canvas_width": self.canvas_w,
        }

    @classmethod
    def from_params(cls, p: dict[str, object]) -> Canvas:
        def get(key: str) -> int:
            value = p.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parameter {key!r} must be a positive integer, got {value!r}")
            return value

        c = cls(
            *(
                get(k)
                for k in ("lr_height", "lr_width", "out_height", "out_width", "canvas_height", "canvas_width")
            )
        )
        if c.canvas_h < c.out_h or c.canvas_w < c.out_w:
            raise ValueError(
                f"canvas {c.canvas_h}x{c.canvas_w} is smaller than the output {c.out_h}x{c.out_w}"
            )
        return c


def _axis_count(length: int, tile: int, stride: int) -> int:
    if length <= tile:
        return 1
    starts = set(range(0, length - tile, stride))
    starts.add(length - tile)
    return len(starts)


def choose_tile(canvas_h: int, canvas_w: int, *, max_tile: int, overlap: int, halo: int, align: int) -> int:
    """The tile size (<= ``max_tile``, multiple of ``align``) that covers the canvas with the fewest
    processed pixels; ties go to the larger tile.

    Fixed tiles waste a lot where the last tile is pushed back to the border: a 1024 px side takes
    three 512 px tiles (1536 px processed), while three 408 px tiles (1224 px) cover it just as well.
    """
    max_tile = round_up(max_tile, align)
    overlap, halo = round_up(overlap, align), round_up(halo, align)
    lowest = max(2 * halo + overlap + align, round_up(max_tile // 2, align))
    best, best_cost = max_tile, None
    for t in range(max_tile, lowest - 1, -align):
        stride = t - 2 * halo - overlap
        if stride < align:
            break
        cost = 1
        for length in (canvas_h, canvas_w):
            cost *= _axis_count(length, t, stride) * min(t, length)
        if best_cost is None or cost < best_cost:
            best, best_cost = t, cost
    return best


def plan(canvas: Canvas, *, tile: int, overlap: int, halo: int, align: int) -> list[TileSpec]:
    """Tiles of the canvas with their LR crops (the rows/cols their bicubic taps read)."""
    tiles = plan_tiles(canvas.canvas_h, canvas.canvas_w, tile=tile, overlap=overlap, halo=halo, align=align)
    specs = []
    for t in tiles:
        r0, r1, _ = window_taps(canvas.lr_h, canvas.out_h, t.y0, t.y1)
        c0, c1, _ = window_taps(canvas.lr_w, canvas.out_w, t.x0, t.x1)
        specs.append(TileSpec(t, r0, c0, r1 - r0, c1 - c0))
    return specs


def crop(lr: torch.Tensor, spec: TileSpec) -> torch.Tensor:
    """The LR crop of one tile, ``(C, rows, cols)``, contiguous."""
    return lr[:, spec.r0 : spec.r0 + spec.rows, spec.c0 : spec.c0 + spec.cols].contiguous()


def crop_taps(lr_crop: torch.Tensor, spec: TileSpec, canvas: Canvas) -> tuple[torch.Tensor, Taps, Taps]:
    """The LR crop cut to its geometry and the taps mapping it onto the tile's output rows/columns."""
    t = spec.tile
    r0, _, th = window_taps(canvas.lr_h, canvas.out_h, t.y0, t.y1)
    c0, _, tw = window_taps(canvas.lr_w, canvas.out_w, t.x0, t.x1)
    ri, ci = th.index + (r0 - spec.r0), tw.index + (c0 - spec.c0)
    if int(ri.min()) < 0 or int(ri.max()) >= spec.rows or int(ci.min()) < 0 or int(ci.max()) >= spec.cols:
        raise ValueError(
            f"LR crop at ({spec.r0}, {spec.c0}) of {spec.rows}x{spec.cols} px does not cover tile {t}"
        )
    if lr_crop.shape[-2] < spec.rows or lr_crop.shape[-1] < spec.cols:
        raise ValueError(f"LR crop is {tuple(lr_crop.shape)}, geometry says {spec.rows}x{spec.cols}")
    return lr_crop[..., : spec.rows, : spec.cols], Taps(ri, th.weight), Taps(ci, tw.weight)


def bicubic_tile(lr_crop: torch.Tensor, spec: TileSpec, canvas: Canvas) -> torch.Tensor:
    """The bicubic upsample of one tile ``(C, tile_h, tile_w)`` from its LR crop — equal to the same
    window of the whole-image bicubic (and to what :class:`hndsr.inference.Upscaler` feeds the model)."""
    return _bicubic(*crop_taps(lr_crop, spec, canvas))


def model_inputs(
    crops: list[torch.Tensor], specs: list[TileSpec], canvas: Canvas
) -> tuple[torch.Tensor, list[LRInput]]:
    """A batch's model input from its LR crops, each tile's taps computed once: the bicubic tiles
    ``(B, C, tile_h, tile_w)`` and, for LR-grid models, each tile's crop with those taps."""
    ups, lows = [], []
    for c, s in zip(crops, specs, strict=True):
        x, rows, cols = crop_taps(c, s, canvas)
        ups.append(_bicubic(x, rows, cols))
        lows.append(LRInput(x[None], rows, cols))
    return torch.stack(ups), lows


def _bicubic(x: torch.Tensor, rows: Taps, cols: Taps) -> torch.Tensor:
    return apply_taps(apply_taps(x, rows, -2), cols, -1)
