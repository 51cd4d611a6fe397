"""Evaluation protocol: HR -> antialiased bicubic down by the scale -> model -> compare with HR,
always beside plain bicubic on the same images (PSNR/SSIM on Y with a ``ceil(scale)`` border, LPIPS
AlexNet v0.1, ERGAS, SAM)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hndsr.data import load_rgb
from hndsr.errors import ImageTooSmallError, InputError
from hndsr.image_quality import QualityScores, score_pair
from hndsr.inference import Upscaler
from hndsr.lpips import LPIPS
from hndsr.resample import check_scale, degrade, resize

logger = logging.getLogger(__name__)

METRIC_KEYS = ("psnr_y", "ssim_y", "lpips", "ergas", "sam")


@dataclass
class EvaluationResult:
    scale: float
    steps: int
    n_images: int
    model: dict[str, float]
    bicubic: dict[str, float]
    seconds_per_megapixel: float
    skipped: list[dict[str, str]] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "steps": self.steps,
            "n_images": self.n_images,
            "model": self.model,
            "bicubic": self.bicubic,
            "seconds_per_megapixel": self.seconds_per_megapixel,
            "skipped": self.skipped,
            "per_image": self.per_image,
        }


def _mean(rows: list[QualityScores]) -> dict[str, float]:
    out = {}
    for key in METRIC_KEYS:
        values = [getattr(r, key) for r in rows if math.isfinite(getattr(r, key))]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


class ImageUpscaler(Protocol):
    """What evaluation needs of a model: :class:`Upscaler`, or a baseline measured beside it."""

    def upscale(
        self,
        lr: torch.Tensor,
        *,
        scale: float,
        out_size: tuple[int, int],
        steps: int,
        strength: float | None,
        seed: int,
    ) -> torch.Tensor: ...


def evaluate_images(
    upscaler: ImageUpscaler,
    paths: list[Path],
    *,
    scale: float,
    steps: int = 0,
    strength: float | None = None,
    seed: int = 0,
    lpips_model: LPIPS | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    check_scale(scale)
    if not paths:
        raise InputError("no images to evaluate: check --data (a folder of HR images) and --split")
    model_rows: list[QualityScores] = []
    bicubic_rows: list[QualityScores] = []
    per_image: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seconds = 0.0
    megapixels = 0.0
    for i, path in enumerate(paths):
        try:
            hr = load_rgb(path)
            lr = degrade(hr, scale)
        except (InputError, ImageTooSmallError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            skipped.append({"path": str(path), "reason": str(exc)})
            continue
        size = (int(hr.shape[-2]), int(hr.shape[-1]))
        started = time.perf_counter()
        sr = upscaler.upscale(lr, scale=scale, out_size=size, steps=steps, strength=strength, seed=seed)
        seconds += time.perf_counter() - started
        megapixels += size[0] * size[1] / 1e6
        bicubic = resize(lr, size).clamp(0.0, 1.0)
        m = score_pair(sr[None].cpu(), hr[None], scale=scale, lpips_model=lpips_model)
        b = score_pair(bicubic[None], hr[None], scale=scale, lpips_model=lpips_model)
        model_rows.append(m)
        bicubic_rows.append(b)
        per_image.append({"path": str(path), "model": m.as_dict(), "bicubic": b.as_dict()})
        if progress is not None:
            progress(i + 1, len(paths))
    if not model_rows:
        raise InputError(
            "none of the images could be evaluated (see the skipped list): they are unreadable or too small"
        )
    return EvaluationResult(
        scale=scale,
        steps=steps,
        n_images=len(model_rows),
        model=_mean(model_rows),
        bicubic=_mean(bicubic_rows),
        seconds_per_megapixel=seconds / megapixels,
        skipped=skipped,
        per_image=per_image,
    )


@torch.no_grad()
def tiling_discrepancy(
    upscaler: Upscaler, lr: torch.Tensor, *, scale: float, tile: int | None = None, overlap: int | None = None
) -> float:
    """Max |tiled - whole| on the deterministic path (values in [0, 1]); tiling defaults to the upscaler's."""
    whole = upscaler.upscale(lr, scale=scale, steps=0, tile=0)
    tiled = upscaler.upscale(lr, scale=scale, steps=0, tile=tile, overlap=overlap)
    return float((whole - tiled).abs().max())
