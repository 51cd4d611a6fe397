"""Bicubic resampling by any real factor, matching Pillow's ``Image.resize(..., BICUBIC)``.

Pillow's resampler is the de-facto degradation of SR benchmarks: a cubic kernel (a = -0.5) whose
support widens by the downscale factor (antialiasing), with weights clipped at the image border and
renormalised. It is separable, so it is stored as per-output-pixel tap indices and weights; a tile
of the output can be computed from the rows/columns it needs, which makes tiled bicubic exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from hndsr.errors import ImageTooSmallError, ScaleError

MIN_SCALE = 2.0
MAX_SCALE = 4.0
_CUBIC_A = -0.5  # Pillow's bicubic (Keys 1981 with a = -0.5)


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@dataclass(frozen=True)
class Taps:
    """Separable resampling taps along one axis: ``out[i] = sum_k weight[i, k] * in[index[i, k]]``."""

    index: torch.Tensor  # (out, K) int64, clamped into [0, in_size)
    weight: torch.Tensor  # (out, K) float32, zero for unused taps


@lru_cache(maxsize=256)
def _taps_numpy(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    scale = in_size / out_size
    filterscale = max(scale, 1.0) if antialias else 1.0
    support = 2.0 * filterscale
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.floor(centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.floor(centers + support + 0.5).astype(np.int64), in_size)
    ntaps = int((xmax - xmin).max())
    k = np.arange(ntaps, dtype=np.int64)
    index = xmin[:, None] + k[None, :]
    valid = index < xmax[:, None]
    weight = _cubic((index - centers[:, None] + 0.5) / filterscale) * valid
    weight = weight / weight.sum(axis=1, keepdims=True)
    return np.minimum(index, in_size - 1), weight


def taps(in_size: int, out_size: int, *, antialias: bool = True) -> Taps:
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resample sizes must be positive, got {in_size} -> {out_size}")
    index, weight = _taps_numpy(in_size, out_size, antialias)
    return Taps(torch.from_numpy(index), torch.from_numpy(weight.astype(np.float32)))


def apply_taps(x: torch.Tensor, t: Taps, dim: int, *, chunk: int = 1024) -> torch.Tensor:
    """Resample ``x`` along ``dim`` with ``t`` (indices relative to ``x`` along that axis)."""
    # A dense band of weights per chunk of outputs turns the resampling into one matmul (fast on
    # every backend) while memory stays bounded by chunk x (input span of the chunk).
    x = x.movedim(dim, -1)
    index = t.index.to(x.device)
    weight = t.weight.to(device=x.device, dtype=x.dtype)
    parts = []
    for start in range(0, index.shape[0], chunk):
        idx, w = index[start : start + chunk], weight[start : start + chunk]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        band = torch.zeros(idx.shape[0], hi - lo, device=x.device, dtype=x.dtype)
        band.scatter_add_(1, idx - lo, w)
        parts.append(x[..., lo:hi] @ band.T)
    out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return out.movedim(-1, dim)


def window_taps(in_size: int, out_size: int, start: int, stop: int) -> tuple[int, int, Taps]:
    """The input span ``[lo, hi)`` that output rows ``[start, stop)`` read (rows past ``out_size``
    replicate the last one: canvas padding) and their taps relative to ``lo``."""
    t = taps(in_size, out_size)
    idx = torch.arange(start, stop).clamp(max=out_size - 1)
    index, weight = t.index[idx], t.weight[idx]
    lo, hi = int(index.min()), int(index.max()) + 1
    return lo, hi, Taps(index - lo, weight)


def resize(
    x: torch.Tensor,
    size: tuple[int, int],
    *,
    antialias: bool = True,
    rows: slice | torch.Tensor | None = None,
    cols: slice | torch.Tensor | None = None,
) -> torch.Tensor:
    """Bicubic-resize ``x`` (..., H, W) to ``size``; ``rows``/``cols`` select a window of the output.

    A window is computed from the input rows and columns it needs only, and equals the same window
    of the full-size result exactly, which is what tiled inference relies on.
    """
    out_h, out_w = size
    th = taps(x.shape[-2], out_h, antialias=antialias)
    tw = taps(x.shape[-1], out_w, antialias=antialias)
    if rows is not None:
        th = Taps(th.index[rows], th.weight[rows])
    if cols is not None:
        tw = Taps(tw.index[cols], tw.weight[cols])
    return apply_taps(apply_taps(x, th, -2), tw, -1)


def check_scale(scale: float) -> float:
    if not math.isfinite(scale) or not MIN_SCALE <= scale <= MAX_SCALE:
        raise ScaleError(
            f"scale {scale} is outside the supported range [{MIN_SCALE:g}, {MAX_SCALE:g}]: "
            "pass a scale between 2 and 4 (non-integer values such as 2.5 are fine)"
        )
    return float(scale)


def lr_size(hr_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Size of the low-resolution counterpart of an HR image at ``scale``."""
    return max(1, round(hr_size[0] / scale)), max(1, round(hr_size[1] / scale))


def sr_size(lr_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Output size for an LR image upscaled by ``scale``."""
    return round(lr_hw[0] * scale), round(lr_hw[1] * scale)


def degrade(hr: torch.Tensor, scale: float, *, min_size: int = 8) -> torch.Tensor:
    """Antialiased bicubic downsampling by ``scale`` in [2, 4]: the degradation of the evaluation protocol."""
    check_scale(scale)
    h, w = lr_size((hr.shape[-2], hr.shape[-1]), scale)
    if min(h, w) < min_size:
        raise ImageTooSmallError(
            f"image of {hr.shape[-2]}x{hr.shape[-1]} px is too small to degrade by x{scale:g} "
            f"(needs at least {min_size} px per side after downsampling)"
        )
    return resize(hr, (h, w), antialias=True)
