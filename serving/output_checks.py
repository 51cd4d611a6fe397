"""The predictor's output checks: finite, in range and not degenerate, and the textured tile its
warm-up self-test renders.
"""

from __future__ import annotations

import torch

from hndsr.errors import OutputValidationError
from hndsr.model_pass import validate_output


def mean_gradient(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference of the band mean, per image of ``(B, C, H, W)`` -> ``(B,)``,
    on every other row and column (a quarter of the work; output and input are measured alike, and a
    flat or grey output stays flat on any grid)."""
    g = x[:, :, ::2, ::2].mean(dim=1)
    gy = (g[:, 1:, :] - g[:, :-1, :]).abs().mean(dim=(1, 2))
    gx = (g[:, :, 1:] - g[:, :, :-1]).abs().mean(dim=(1, 2))
    return gx + gy


def check_output(sr: torch.Tensor, up: torch.Tensor, *, floor: float = 0.25) -> torch.Tensor:
    """Finite and in range (:func:`hndsr.model_pass.validate_output`, which also clamps), and not
    degenerate: a tile whose bicubic input has structure must keep at least ``floor`` of its
    sharpness (a flat or grey output from a textured input means the model lost the image)."""
    sr = validate_output(sr.float())
    s_up, s_sr = mean_gradient(up.float()), mean_gradient(sr)
    bad = (s_up > 1e-3) & (s_sr < floor * s_up)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise OutputValidationError(
            f"degenerate output: tile {i} has sharpness {float(s_sr[i]):.5f}, below {floor:g} x that of its "
            f"bicubic input ({float(s_up[i]):.5f}); the model lost the image — check checkpoint and device"
        )
    return sr


def warmup_lr() -> torch.Tensor:
    """A deterministic textured LR tile (3, 32, 32), upscaled x4 by the warm-up."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    lr = torch.stack(
        [
            0.5 + 0.25 * torch.sin(0.4 * xx + 0.3 * yy),
            0.5 + 0.25 * torch.cos(0.25 * xx),
            0.5 + 0.2 * torch.sin(0.5 * yy),
        ]
    )
    return lr
