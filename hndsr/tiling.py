"""Overlapping tiles and seamless stitching.

Tiles are planned in output pixels, aligned to the model's latent factor. On a side shared with a
neighbour, a tile's outer ``halo`` pixels are context only (weight 0: they lack the neighbourhood the
network needs), then a raised-cosine (Hann) ramp blends it over ``overlap`` pixels. Sides that touch
the image border have no halo and no ramp: weight 1 up to the last row. So no output pixel ever has
weight zero — the system this replaces used a window that was zero at tile edges and turned the
outer rows of every image grey — and with ``halo`` at least the network's receptive field, tiled
output equals whole-image output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """Output-pixel window ``[y0, y1) x [x0, x1)``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _axis_plan(length: int, tile: int, halo: int, overlap: int, align: int) -> tuple[int, int]:
    """(tile size, stride) for one axis: the fewest tiles of at most ``tile`` px, shrunk evenly so
    that they end exactly at the border (rather than a last tile mostly overlapping its neighbour)."""
    if length <= tile:
        return length, length
    margin = 2 * halo + overlap
    count = math.ceil((length - margin) / (tile - margin))
    size = min(tile, round_up(math.ceil((length - margin) / count) + margin, align))
    return size, size - margin


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends exactly at the border
    return sorted(set(starts))


def plan_tiles(
    height: int, width: int, *, tile: int, overlap: int, halo: int = 0, align: int = 4
) -> list[Tile]:
    """Cover a (``height``, ``width``) canvas (multiples of ``align``) with same-size tiles whose
    useful parts (the tile less its halo on interior sides) overlap by ``overlap``.

    ``tile == 0`` means one tile for the whole canvas. Images smaller than a tile get one tile of
    their own size, so a batch of tiles always has one shape.
    """
    if height % align or width % align:
        raise ValueError(f"canvas {height}x{width} must be a multiple of {align}")
    if tile < 0 or overlap < 0 or halo < 0:
        raise ValueError("tile, overlap and halo must be >= 0")
    if tile == 0:
        return [Tile(0, 0, height, width)]
    tile, overlap, halo = round_up(tile, align), round_up(overlap, align), round_up(halo, align)
    if tile - 2 * halo - overlap < align:
        raise ValueError(
            f"tile ({tile}) must exceed 2 x halo ({halo}) + overlap ({overlap}): use a bigger tile"
        )
    th, stride_y = _axis_plan(height, tile, halo, overlap, align)
    tw, stride_x = _axis_plan(width, tile, halo, overlap, align)
    return [
        Tile(y, x, y + th, x + tw)
        for y in _starts(height, th, stride_y)
        for x in _starts(width, tw, stride_x)
    ]


def _ramp(length: int, overlap: int, halo: int, *, rise: bool, fall: bool) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float64)
    # sin^2 sampled at pixel centres: strictly positive, and ramp(i) + ramp(n-1-i) == 1.
    n = overlap
    ramp = torch.sin(0.5 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / max(n, 1)) ** 2
    if rise:
        w[:halo] = 0.0
        w[halo : halo + n] = ramp
    if fall:
        w[length - halo :] = 0.0
        w[length - halo - n : length - halo] = torch.flip(ramp, dims=(0,))
    return w


def blend_window(tile: Tile, height: int, width: int, overlap: int, halo: int = 0) -> torch.Tensor:
    """Weights ``(tile.height, tile.width)``: 0 on the halo of interior sides, a Hann ramp over the
    overlap, 1 elsewhere — in particular up to the canvas border."""
    wy = _ramp(tile.height, overlap, halo, rise=tile.y0 > 0, fall=tile.y1 < height)
    wx = _ramp(tile.width, overlap, halo, rise=tile.x0 > 0, fall=tile.x1 < width)
    return (wy[:, None] * wx[None, :]).float()


class Stitcher:
    """Accumulates weighted tiles of a ``(C, height, width)`` canvas and returns their weighted mean.

    A single tile covering the whole canvas has weight 1 everywhere (no interior sides): it is kept
    as it is, without the accumulators (``add`` may then hold on to ``values`` without copying).
    """

    def __init__(
        self, channels: int, height: int, width: int, *, overlap: int, halo: int = 0, device: str = "cpu"
    ) -> None:
        self.channels, self.device = channels, device
        self.height, self.width, self.overlap, self.halo = height, width, overlap, halo
        self._whole: torch.Tensor | None = None
        self._total: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None

    def _accumulators(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._total is None or self._weight is None:
            self._total = torch.zeros(self.channels, self.height, self.width, device=self.device)
            self._weight = torch.zeros(self.height, self.width, device=self.device)
            if self._whole is not None:  # a second tile after a whole-canvas one: weight 1 so far
                self._total += self._whole
                self._weight += 1.0
                self._whole = None
        return self._total, self._weight

    def add(self, tile: Tile, values: torch.Tensor) -> None:
        covers = (tile.y0, tile.x0, tile.y1, tile.x1) == (0, 0, self.height, self.width)
        if covers and self._whole is None and self._total is None:
            self._whole = values.float()
            return
        total, weight = self._accumulators()
        w = blend_window(tile, self.height, self.width, self.overlap, self.halo).to(values.device)
        total[:, tile.y0 : tile.y1, tile.x0 : tile.x1] += values.float() * w
        weight[tile.y0 : tile.y1, tile.x0 : tile.x1] += w

    def result(self) -> torch.Tensor:
        if self._whole is not None:
            return self._whole
        total, weight = self._accumulators()
        if bool((weight <= 0).any()):
            raise RuntimeError("stitching left uncovered pixels: the tile plan does not cover the canvas")
        return total / weight


class BandStitcher:
    """The streaming form of :class:`Stitcher`: the same weighted mean, row band by row band.

    Tiles must come in ``plan_tiles`` order (rows of tiles top to bottom). Once a tile starting at row
    ``y`` is next, no later tile touches the rows above ``y``: :meth:`pop` hands them back, divided by
    their weights (the very arithmetic of :meth:`Stitcher.result`), a few rows at a time, and the band
    slides down when the next tile needs room. Only ``rows`` (the tallest tile) x ``width``
    accumulators are ever held.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        rows: int,
        overlap: int,
        halo: int = 0,
        device: str = "cpu",
    ) -> None:
        self.height, self.width, self.overlap, self.halo = height, width, overlap, halo
        self.rows = min(rows, height)
        self.total = torch.zeros(channels, self.rows, width, device=device)
        self.weight = torch.zeros(self.rows, width, device=device)
        self.base = 0  # canvas row of the band's first row
        self.top = 0  # first canvas row not handed back yet (>= base)
        self.band_bytes = (self.total.numel() + self.weight.numel()) * self.total.element_size()

    def add(self, tile: Tile, values: torch.Tensor) -> None:
        """Accumulate ``tile``; the final rows above it must have been popped (:meth:`pop`)."""
        if tile.y0 < self.top:
            raise ValueError(f"tile {tile} starts above row {self.top}, which was already handed back")
        if tile.y1 - self.base > self.rows:
            self._slide()
        if tile.y1 - self.base > self.rows:
            raise ValueError(
                f"tile {tile} does not fit the band of rows {self.base}..{self.base + self.rows}: "
                "pop the finished rows above it first"
            )
        w = blend_window(tile, self.height, self.width, self.overlap, self.halo).to(values.device)
        y0, y1 = tile.y0 - self.base, tile.y1 - self.base
        self.total[:, y0:y1, tile.x0 : tile.x1] += values.float() * w
        self.weight[y0:y1, tile.x0 : tile.x1] += w

    def pop(self, until: int, max_rows: int) -> tuple[int, torch.Tensor] | None:
        """Up to ``max_rows`` final rows before canvas row ``until`` (the next tile's first row, or the
        height once every tile was added) as ``(y0, (C, n, width))``; None when there are none left."""
        n = min(until, self.height) - self.top
        if n <= 0:
            return None
        if self.top + 1 > self.base + self.rows:  # rows no tile ever covered: never silently zero
            raise RuntimeError("stitching left uncovered pixels: the tile plan does not cover the canvas")
        n = min(n, max_rows, self.base + self.rows - self.top)
        a = self.top - self.base
        weight = self.weight[a : a + n]
        if bool((weight <= 0).any()):
            raise RuntimeError("stitching left uncovered pixels: the tile plan does not cover the canvas")
        out = self.total[:, a : a + n] / weight
        self.top += n
        return self.top - n, out

    def _slide(self) -> None:
        """Drop the rows handed back: the rest moves to the band's top (clone: they overlap)."""
        n = self.top - self.base
        if n <= 0:
            return
        keep = self.rows - n
        self.total[:, :keep] = self.total[:, n:].clone()
        self.weight[:keep] = self.weight[n:].clone()
        self.total[:, keep:] = 0.0
        self.weight[keep:] = 0.0
        self.base = self.top
