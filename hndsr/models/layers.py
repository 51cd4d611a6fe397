"""Building blocks shared by the networks. Tensors are ``(B, C, H, W)``."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def sinusoidal_embedding(values: torch.Tensor, dim: int, *, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of scalars ``(B,)`` -> ``(B, dim)`` (timesteps, scales)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device) / half)
    args = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScaleEmbedding(nn.Module):
    """Maps the upscaling factor (a real number in [2, 4]) to a conditioning vector ``(B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        # Spread [2, 4] over a few hundred units so the sinusoids separate nearby scales.
        return self.mlp(sinusoidal_embedding(scale * 100.0, self.dim))


class FiLM(nn.Module):
    """Feature-wise affine conditioning: ``x * (1 + gamma) + beta``, zero-initialised to identity."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (EDSR style: no normalisation)."""

    def __init__(self, channels: int, *, res_scale: float = 1.0, act: str = "gelu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = activation(act)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))
