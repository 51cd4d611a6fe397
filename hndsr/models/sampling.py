"""The DDIM sampling loop, apart from the network (``LatentUNet``) and the scheduler (``DDIMScheduler``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hndsr.models.scheduler import DDIMScheduler
from hndsr.models.unet import LatentUNet


def ddim_sample(
    unet: LatentUNet,
    scheduler: DDIMScheduler,
    *,
    prior: torch.Tensor,
    scale: torch.Tensor,
    initial_noise: torch.Tensor,
    steps: int,
    strength: float = 1.0,
    eta: float = 0.0,
    step_noise: Callable[[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sample the normalised latent residual ``x_0`` given the prior.

    The residual's mean is zero, so starting at an intermediate timestep (``strength`` < 1, as in
    SDEdit) means starting from ``sqrt(1 - a_t) * noise``: a smaller, closer-to-the-prior sample.
    ``step_noise(i)`` supplies the eta > 0 noise of step ``i`` (so tiles can share one global field).
    """
    timesteps = scheduler.set_timesteps(steps, strength=strength)
    a_start = scheduler.alphas_cumprod[int(timesteps[0])].to(initial_noise.device)
    x = torch.sqrt(1.0 - a_start) * initial_noise
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = unet(scheduler.scale_model_input(x, t), t_batch, prior, scale)
        noise = step_noise(i) if (step_noise is not None and eta > 0) else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x
