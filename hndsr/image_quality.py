"""Image-quality metrics with the evaluation protocol of remote-sensing super-resolution papers.

Protocol (what the numbers in SR papers usually mean, and what this module does):

* Inputs are torch tensors ``(B, 3, H, W)`` or ``(3, H, W)``, float, RGB in ``[0, 1]``; ``sr`` and ``hr``
  have the same shape. Values are not clamped here: clamp/quantise the model output before scoring if the
  comparison needs it.
* ``border`` pixels are cropped on every side before scoring. :func:`score_pair` uses
  ``border = ceil(scale)`` (the usual "crop the scale" rule; non-integer scales are rounded up so that
  never less than the scale is cropped).
* PSNR and SSIM are computed on the luma channel Y (ITU-R BT.601 as in MATLAB ``rgb2ycbcr``), data range 1.
  SSIM is implemented here ("valid" Gaussian filtering as in the reference code); ERGAS and SAM come from
  torchmetrics.
* ERGAS and SAM are computed on the three RGB bands.
* Every function scores each image of the batch separately and returns the mean over the batch
  (e.g. mean of per-image PSNR, not PSNR of the mean MSE).

Computation is done in float64: SAM in particular needs ``acos`` near 1, where float32 rounding alone
gives angles of ~0.02 degrees for identical images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import (
    error_relative_global_dimensionless_synthesis,
    spectral_angle_mapper,
)

from hndsr.errors import InputError
from hndsr.lpips import LPIPS, lpips_distance

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
"""PSNR reported for (numerically) identical images, instead of ``inf`` which poisons averages."""

_Y_OFFSET = 16.0 / 255.0
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


def _as_batch(x: Tensor, name: str = "x") -> Tensor:
    """Validate an RGB image tensor and return it as ``(B, 3, H, W)`` float64."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"{name} must have shape (B, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or infinite values; check the model output")
    return x.detach().to(torch.float64)


def _pair(sr: Tensor, hr: Tensor, border: int) -> tuple[Tensor, Tensor]:
    """Validate ``sr``/``hr``, bring them to ``(B, 3, H, W)`` float64 and crop ``border``."""
    sr_b = _as_batch(sr, "sr")
    hr_b = _as_batch(hr, "hr")
    if sr_b.shape != hr_b.shape:
        raise InputError(
            f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}; "
            "resize or crop the SR output to the HR reference first"
        )
    return crop_border(sr_b, border), crop_border(hr_b, border)


def border_for_scale(scale: float) -> int:
    """Pixels to crop on each side for a super-resolution ``scale``: ``ceil(scale)``."""
    if not math.isfinite(scale) or scale <= 0:
        raise InputError(f"scale must be a positive finite number, got {scale}")
    return math.ceil(scale)


def rgb_to_y(x: Tensor) -> Tensor:
    """Luma Y of ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` on ``[0, 1]`` data.

    ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``, so Y lies in ``[16/255, 235/255]``.
    Input ``(B, 3, H, W)`` or ``(3, H, W)``; output keeps the layout with one channel
    (``(B, 1, H, W)`` or ``(1, H, W)``) and the input dtype.
    """
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise InputError(f"rgb_to_y expects (B, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    r, g, b = x.unbind(dim=-3)
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def crop_border(x: Tensor, border: int) -> Tensor:
    """Crop ``border`` pixels from each side of the last two dimensions (``border=0``: no crop)."""
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise InputError(f"border must be a non-negative int, got {border!r}")
    if border == 0:
        return x
    h, w = x.shape[-2], x.shape[-1]
    if h <= 2 * border or w <= 2 * border:
        raise InputError(f"image of size {h}x{w} is too small to crop a border of {border} pixels")
    return x[..., border : h - border, border : w - border]


def psnr_y(sr: Tensor, hr: Tensor, *, border: int) -> float:
    """PSNR on the Y channel, data range 1.0, after cropping ``border`` pixels on each side.

    Returns the mean over the batch of per-image PSNR. Each per-image value is capped at
    :data:`PSNR_CAP_DB` (100 dB): identical images would otherwise give ``inf``, which makes averages
    meaningless. For a scale-``s`` model, use ``border=ceil(s)`` (see :func:`border_for_scale`).
    """
    sr_b, hr_b = _pair(sr, hr, border)
    mse = (rgb_to_y(sr_b) - rgb_to_y(hr_b)).pow(2).mean(dim=(1, 2, 3))
    # 10 log10(1/mse) reaches the cap at mse = 1e-10; clamping there avoids log10(0).
    psnr = -10.0 * torch.log10(mse.clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0)))
    return float(psnr.clamp_max(PSNR_CAP_DB).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_y(sr: Tensor, hr: Tensor, *, border: int) -> float:
    """SSIM on the Y channel after cropping ``border`` pixels; mean over the batch of per-image SSIM.

    Wang et al. 2004 as in their ``ssim_index.m``, BasicSR and scikit-image (``gaussian_weights=True``,
    ``use_sample_covariance=False``): Gaussian window 11x11, sigma 1.5, K1=0.01, K2=0.03, data range 1,
    "valid" filtering (the SSIM map covers only windows fully inside the image) and the map's mean.

    Not torchmetrics: its ``structural_similarity_index_measure`` (1.9) reflect-pads the image and averages
    the full-size map, borders included, which differs from the published protocol by ~1e-3.
    """
    sr_b, hr_b = _pair(sr, hr, border)
    a, b = rgb_to_y(sr_b), rgb_to_y(hr_b)
    if min(a.shape[-2:]) < 11:
        raise InputError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(a.shape[-2:])}")
    g = _gaussian_window().to(a.device)
    gv, gh = g.view(1, 1, 11, 1), g.view(1, 1, 1, 11)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, no padding ("valid")
        return F.conv2d(F.conv2d(t, gv), gh)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


def ergas(sr: Tensor, hr: Tensor, *, ratio: float, border: int) -> float:
    """ERGAS (Wald 2000) on the RGB bands after cropping ``border``; mean over the batch. Lower is better.

    ``ERGAS = 100 / ratio * sqrt(mean_k (RMSE_k / mean(hr_k))^2)``. ``ratio`` follows the torchmetrics
    (>= 1.4) convention: the resolution ratio high/low, i.e. the SR scale (4 for x4), which equals Wald's
    pixel-size ratio ``h/l = 1/4``. A band whose reference mean is 0 gives ``inf``.
    """
    if not math.isfinite(ratio) or ratio <= 0:
        raise InputError(f"ratio must be a positive finite number, got {ratio}")
    sr_b, hr_b = _pair(sr, hr, border)
    per_image = error_relative_global_dimensionless_synthesis(sr_b, hr_b, ratio=ratio, reduction="none")
    return float(per_image.mean())


def sam(sr: Tensor, hr: Tensor, *, border: int) -> float:
    """Mean spectral angle in DEGREES on the RGB bands after cropping ``border``. Lower is better.

    torchmetrics returns radians; they are converted here. The angle is averaged per image, then over the
    batch. Pixels where either spectrum is all zero (black, typical no-data in satellite tiles) have no
    defined angle and are left out of the mean; an image with no such pixel left gives ``nan``.
    """
    sr_b, hr_b = _pair(sr, hr, border)
    angles = spectral_angle_mapper(sr_b, hr_b, reduction="none")  # (B, H, W), radians, NaN where 0/0
    valid = (sr_b.norm(dim=1) > 0) & (hr_b.norm(dim=1) > 0)
    angles = torch.where(valid, angles, torch.nan)
    per_image = torch.rad2deg(angles.flatten(1).nanmean(dim=1))
    return float(per_image.mean())


@dataclass(frozen=True)
class QualityScores:
    """Scores of one SR/HR pair (or the mean over a batch). ``lpips`` is ``nan`` when not computed."""

    psnr_y: float
    ssim_y: float
    lpips: float
    ergas: float
    sam: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score_pair(sr: Tensor, hr: Tensor, *, scale: float, lpips_model: LPIPS | None) -> QualityScores:
    """All metrics with the paper protocol: ``border = ceil(scale)`` cropped for every metric.

    ERGAS uses ``ratio = scale``. LPIPS (AlexNet v0.1, input mapped from ``[0, 1]`` to ``[-1, 1]``) is
    computed on the same cropped RGB images; ``lpips_model=None`` gives ``lpips = nan``.
    """
    border = border_for_scale(scale)
    sr_b, hr_b = _pair(sr, hr, 0)  # validate once, crop in each metric
    if lpips_model is None:
        lp = float("nan")
    else:
        lp = lpips_distance(crop_border(sr_b, border), crop_border(hr_b, border), lpips_model)
    return QualityScores(
        psnr_y=psnr_y(sr_b, hr_b, border=border),
        ssim_y=ssim_y(sr_b, hr_b, border=border),
        lpips=lp,
        ergas=ergas(sr_b, hr_b, ratio=float(scale), border=border),
        sam=sam(sr_b, hr_b, border=border),
    )
