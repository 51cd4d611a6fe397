"""Stage 1: a convolutional autoencoder of HR detail, with a latent grid at 1/``factor`` of HR resolution.

Bicubic is the floor by construction: the encoder sees the detail that bicubic misses
(``hr - up``, ``up`` = bicubic upsample of the LR image) and the decoder renders a residual that is
added back to ``up``. A zero latent therefore decodes to (roughly) bicubic, never to something worse,
and the autoencoder's reconstruction ceiling sits far above bicubic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hndsr.models.layers import ResBlock, activation


class DetailAutoencoder(nn.Module):
    """Shapes: ``up``/``hr`` ``(B, 3, H, W)`` with H, W multiples of ``factor``;
    latent ``(B, latent_channels, H/factor, W/factor)``."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        latent_channels: int = 16,
        width: int = 64,
        factor: int = 4,
        encoder_blocks: int = 1,
        decoder_blocks: int = 1,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.factor = factor
        packed = in_channels * factor * factor
        self.encoder = nn.Sequential(
            nn.Conv2d(packed, width, 3, padding=1),
            *[ResBlock(width, act=act) for _ in range(encoder_blocks)],
            activation(act),
            nn.Conv2d(width, latent_channels, 3, padding=1),
        )
        # The decoder also sees the bicubic image (space-to-depth packed), so it renders detail in context.
        self.decoder_head = nn.Conv2d(latent_channels + packed, width, 3, padding=1)
        self.decoder_body = nn.Sequential(
            *[ResBlock(width, act=act) for _ in range(decoder_blocks)], activation(act)
        )
        self.decoder_tail = nn.Conv2d(width, packed, 3, padding=1)
        nn.init.zeros_(self.decoder_tail.weight)  # start as exact bicubic
        nn.init.zeros_(self.decoder_tail.bias)  # type: ignore[arg-type]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)

    def encode(self, hr: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.pack(hr - up))

    def decode(self, latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Latent + bicubic image -> HR image ``up + residual``."""
        h = self.decoder_head(torch.cat([latent, self.pack(up)], dim=1))
        residual = self.decoder_tail(self.decoder_body(h))
        return up + F.pixel_shuffle(residual, self.factor)

    def forward(self, hr: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encode(hr, up)
        return self.decode(latent, up), latent
