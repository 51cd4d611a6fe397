"""Stage 3: a small latent diffusion UNet, conditioned on the operator's prior, the timestep and the scale.

It predicts the noise (epsilon) of the normalised latent *residual* ``(z - prior) / residual_std``:
the prior is already a good estimate, so the diffusion only has to model the detail the
deterministic path cannot pin down. Shapes: latents ``(B, C, h, w)``, any h, w (odd sizes are padded
internally to the UNet's multiple).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndsr.models.layers import FiLM, sinusoidal_embedding


class TimeResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, *, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = FiLM(cond_dim, out_ch)
        self.norm2 = nn.GroupNorm(min(8, out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.film(self.norm2(h), cond)
        h = self.conv2(self.act(h))
        return self.skip(x) + h


class LatentUNet(nn.Module):
    """eps_theta(x_t, t | prior, scale): ``(B, C, h, w)`` -> ``(B, C, h, w)``."""

    def __init__(
        self,
        *,
        latent_channels: int = 16,
        width: int = 64,
        width_mult: tuple[int, ...] = (1, 2),
        cond_dim: int = 128,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.levels = len(width_mult)
        self.time_mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.scale_mlp = nn.Sequential(
            nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )
        self.head = nn.Conv2d(2 * latent_channels, width, 3, padding=1)
        widths = [width * m for m in width_mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = width
        for i, w in enumerate(widths):
            self.down.append(TimeResBlock(ch, w, cond_dim=cond_dim))
            ch = w
            if i < self.levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = TimeResBlock(ch, ch, cond_dim=cond_dim)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(TimeResBlock(ch + w, w, cond_dim=cond_dim))
            ch = w
        tail_conv = nn.Conv2d(ch, latent_channels, 3, padding=1)
        nn.init.zeros_(tail_conv.weight)  # start by predicting zero noise
        nn.init.zeros_(tail_conv.bias)  # type: ignore[arg-type]
        self.tail = nn.Sequential(nn.GroupNorm(min(8, ch), ch), nn.SiLU(), tail_conv)

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        multiple = 2 ** (self.levels - 1)
        pad_h, pad_w = (-h_in) % multiple, (-w_in) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            prior = F.pad(prior, (0, pad_w, 0, pad_h), mode="replicate")
        cond = self.time_mlp(sinusoidal_embedding(timestep, self.cond_dim)) + self.scale_mlp(
            sinusoidal_embedding(scale * 100.0, self.cond_dim)
        )
        h = self.head(torch.cat([x, prior], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        h = self.mid(h, cond)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), cond)
        out = self.tail(h)
        return out[..., :h_in, :w_in]
