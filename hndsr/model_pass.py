"""The one model pass: a batch of bicubic tiles through the model, with what it depends on (device,
reduced precision, the canvas noise sliced per tile, the output check).

:class:`hndsr.inference.Upscaler` and the KServe predictor both render through :func:`render_batch`,
so the CLI, evaluation and the servers produce the same pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hndsr.errors import InputError, OutputValidationError
from hndsr.models.hndsr_model import HNDSR
from hndsr.models.operator import LRInput
from hndsr.runtime import native_bf16
from hndsr.tiling import Tile


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device, *, half: bool = False) -> torch.dtype | None:
    """The reduced precision a model pass runs in on ``device``, or None for fp32.

    CUDA: fp16 when asked (``half``). CPU: bfloat16 where the CPU computes it natively (AVX-512
    BF16 / AMX; the release model is trained in bf16 autocast): faster than fp32 for a tiny error in
    the residual added to the fp32 bicubic (measured: benchmarks/NOTES.md). ``HNDSR_CPU_BF16=0``
    keeps fp32.
    """
    if device.type == "cuda":
        return torch.float16 if half else None
    if device.type == "cpu" and os.environ.get("HNDSR_CPU_BF16", "1") != "0":
        return torch.bfloat16 if native_bf16("cpu") else None
    return None


def validate_output(sr: torch.Tensor, *, tolerance: float = 0.05) -> torch.Tensor:
    """Refuse non-finite or wildly out-of-range outputs; clamp the small overshoot of a residual model."""
    # One pass: a NaN makes both extremes NaN, an infinity makes one of them infinite.
    lo_t, hi_t = torch.aminmax(sr)
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OutputValidationError(
            "model produced non-finite values: the checkpoint is broken or the device failed; "
            "re-run on CPU or with a verified checkpoint"
        )
    if lo < -tolerance - 1.0 or hi > 2.0 + tolerance:
        raise OutputValidationError(f"model output range [{lo:.3f}, {hi:.3f}] is far outside [0, 1]")
    return sr.clamp(0.0, 1.0)


def noise_fields(seed: int, channels: int, lh: int, lw: int, count: int = 1) -> list[torch.Tensor]:
    """The DDIM noise of a whole canvas in latent space: the initial field, then one per step when
    eta > 0, drawn from one CPU generator (the same numbers on every device and in every server)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(channels, lh, lw, generator=generator) for _ in range(count)]


def slice_noise(field_: torch.Tensor, tiles: Sequence[Tile], factor: int) -> torch.Tensor:
    """Each tile's window of a canvas noise field, ``(B, C, th / factor, tw / factor)``."""
    return torch.stack(
        [field_[:, t.y0 // factor : t.y1 // factor, t.x0 // factor : t.x1 // factor] for t in tiles]
    )


def render_batch(
    model: HNDSR,
    up: torch.Tensor,
    scale: float,
    *,
    steps: int,
    strength: float,
    eta: float = 0.0,
    initial_noise: torch.Tensor | None = None,
    step_noise: Sequence[torch.Tensor] = (),
    lr: Sequence[LRInput] | None = None,
    micro_batch: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A batch of bicubic tiles ``(B, 3, th, tw)`` through the model -> ``(B, 3, th, tw)`` float32, not
    yet validated: the one model pass of the CLI, evaluation and the predictor. ``lr`` holds each
    tile's LR crop for LR-grid models (crops differ in size at the borders: one tile per call then);
    ``step_noise`` the batch's per-step noise when eta > 0; ``dtype`` the autocast precision."""
    n = 1 if lr is not None else max(1, micro_batch)
    parts = []
    with (
        torch.no_grad(),
        torch.autocast(up.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None),
    ):
        for i in range(0, up.shape[0], n):
            chunk = up[i : i + n]
            parts.append(
                model.render(
                    chunk,
                    torch.full((chunk.shape[0],), float(scale), device=up.device),
                    steps=steps,
                    strength=strength,
                    eta=eta,
                    initial_noise=initial_noise[i : i + n] if initial_noise is not None else None,
                    step_noise=(lambda k, i=i: step_noise[k][i : i + n]) if step_noise else None,
                    lr=lr[i] if lr is not None else None,
                )
            )
    return (torch.cat(parts) if len(parts) > 1 else parts[0]).float()


# Uncertainty: K seeded diffusion draws of the same tiles; their mean is the image and the spread
# across draws says where the model invents detail.
UNCERTAINTY_BAND = "uncertainty"
MIN_SAMPLES, MAX_SAMPLES = 2, 16
SPREAD_WINDOW = 3  # pixels whose variance is pooled (chosen on validation: 3 keeps edges, 5 blurs them)


def check_samples(samples: int, steps: int) -> None:
    """Refuse a sample count the uncertainty estimate cannot use (1 = no estimate, the plain path)."""
    if samples == 1:
        return
    if not MIN_SAMPLES <= samples <= MAX_SAMPLES:
        raise InputError(
            f"samples must be 1 (no uncertainty) or in [{MIN_SAMPLES}, {MAX_SAMPLES}], got {samples}"
        )
    if steps == 0:
        raise InputError(
            "samples need the diffusion path: the deterministic path (steps 0) draws the same image every "
            "time; give steps > 0 (or leave steps at the model's default)"
        )


def sample_seeds(seed: int, samples: int) -> list[int]:
    """The seeds of ``samples`` draws: ``seed`` first, so draw 0 is the single-sample output."""
    return [(seed + k) % 2**32 for k in range(samples)]


def mean_and_spread(draws: torch.Tensor) -> torch.Tensor:
    """K draws ``(K, B, 3, H, W)`` -> ``(B, 4, H, W)``: the per-pixel mean of the draws, and as a fourth
    channel their standard deviation, averaged over R, G, B.

    Each pixel's variance (ddof 1) is pooled with its 8 neighbours' (``SPREAD_WINDOW``): from K = 8 draws
    one pixel's std is a noisy estimate; pooled, its rank correlation with the error rose from 0.31 to
    0.45 on the validation split (benchmarks/uncertainty_calibration.py).
    """
    if draws.shape[0] < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} draws, got {draws.shape[0]}")
    var = draws.var(dim=0, correction=1)
    pad = SPREAD_WINDOW // 2
    pooled = F.avg_pool2d(F.pad(var, (pad, pad, pad, pad), mode="replicate"), SPREAD_WINDOW, stride=1)
    spread = pooled.sqrt().mean(dim=1, keepdim=True)
    return torch.cat([draws.mean(dim=0), spread], dim=1)
