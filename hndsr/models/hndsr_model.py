"""The composite model: autoencoder + neural operator + latent diffusion, one definition for training,
evaluation and serving.

Everything here works on a tile of the output grid: the bicubic-upsampled image ``up``
``(B, 3, H, W)`` (H, W multiples of ``factor``) and, for an operator on the LR grid, the LR crop that
tile reads (:class:`hndsr.models.operator.LRInput`), so the same network runs on a training patch, a
tile or a whole image. Turning an LR image into tiles lives in :mod:`hndsr.inference`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hndsr.models.autoencoder import DetailAutoencoder
from hndsr.models.operator import FourierNeuralOperator, LRInput
from hndsr.models.sampling import ddim_sample
from hndsr.models.scheduler import DDIMConfig, DDIMScheduler
from hndsr.models.unet import LatentUNet

STAGES = ("autoencoder", "operator", "diffusion")

DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "autoencoder": {
        "latent_channels": 64,
        "width": 64,
        "factor": 4,
        "encoder_blocks": 1,
        "decoder_blocks": 1,
        "act": "relu",
    },
    "operator": {
        "width": 64,
        "depth": 8,
        "kernel_size": 9,
        "modes": 3,
        "cond_dim": 64,
        "spectral": False,
        "act": "relu",
        "grid": "latent",  # the seed's; "lr" works on the LR image at every scale (hndsr.models.operator)
        "upsample_channels": 0,  # grid "lr": feature channels carried to the output grid (0 = width)
    },
    "diffusion": {"width": 64, "width_mult": [1, 2], "cond_dim": 128},
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": 4.0,  # the normalised residual has unit std: |x0| > 4 is never plausible
    },
    "sampling": {"steps": 0, "strength": 1.0, "eta": 0.0},
}


def resolve_config(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    config = copy.deepcopy(DEFAULT_CONFIG)
    for section, values in (overrides or {}).items():
        if section not in config:
            raise ValueError(f"unknown model config section {section!r}; expected one of {sorted(config)}")
        unknown = set(values) - set(config[section]) - {"beta_start", "beta_end", "clip_sample"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in model config section {section!r}")
        config[section].update(values)
    return config


class HNDSR(nn.Module):
    """``render(up, scale, steps=0)`` -> SR image ``(B, 3, H, W)`` in [0, 1] (unclamped)."""

    residual_std: torch.Tensor

    def __init__(
        self,
        *,
        autoencoder: dict[str, Any] | None = None,
        operator: dict[str, Any] | None = None,
        diffusion: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        given = {"autoencoder": autoencoder, "operator": operator, "diffusion": diffusion}
        given |= {"scheduler": scheduler, "sampling": sampling}
        self.config = resolve_config({k: v for k, v in given.items() if v})
        ae = self.config["autoencoder"]
        self.factor: int = int(ae["factor"])
        self.latent_channels: int = int(ae["latent_channels"])
        self.autoencoder = DetailAutoencoder(**ae)
        self.operator = FourierNeuralOperator(
            latent_channels=self.latent_channels, factor=self.factor, **self.config["operator"]
        )
        diff = dict(self.config["diffusion"])
        diff["width_mult"] = tuple(diff["width_mult"])
        self.unet = LatentUNet(latent_channels=self.latent_channels, **diff)
        self.scheduler = DDIMScheduler(DDIMConfig(**self.config["scheduler"]))
        # Std of the latent residual (z - prior), measured at the start of stage 3; normalises diffusion.
        self.register_buffer("residual_std", torch.ones(self.latent_channels))

    @property
    def default_steps(self) -> int:
        return int(self.config["sampling"]["steps"])

    @property
    def default_strength(self) -> float:
        return float(self.config["sampling"]["strength"])

    @property
    def needs_lr(self) -> bool:
        """Whether ``prior``/``render`` need the LR pixels (``lr``) beside the bicubic image."""
        return self.operator.grid == "lr"

    def prior(self, up: torch.Tensor, scale: torch.Tensor, lr: LRInput | None = None) -> torch.Tensor:
        return self.operator(up, scale, lr)

    def render(
        self,
        up: torch.Tensor,
        scale: torch.Tensor,
        *,
        steps: int = 0,
        strength: float = 1.0,
        eta: float = 0.0,
        initial_noise: torch.Tensor | None = None,
        step_noise: Any = None,
        lr: LRInput | None = None,
    ) -> torch.Tensor:
        """Deterministic path when ``steps == 0``; otherwise DDIM refinement of the latent prior.
        ``lr``: the LR pixels behind ``up``, required when :attr:`needs_lr`."""
        prior = self.prior(up, scale, lr)
        latent = prior
        if steps > 0:
            if initial_noise is None:
                raise ValueError("render(steps > 0) needs initial_noise (seeded by the caller)")
            std = self.residual_std.view(1, -1, 1, 1)
            residual = ddim_sample(
                self.unet,
                self.scheduler,
                prior=prior / std,
                scale=scale,
                initial_noise=initial_noise,
                steps=steps,
                strength=strength,
                eta=eta,
                step_noise=step_noise,
            )
            latent = prior + residual * std
        return self.autoencoder.decode(latent, up)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        modules = {"autoencoder": self.autoencoder, "operator": self.operator, "diffusion": self.unet}
        return list(modules[stage].parameters())
