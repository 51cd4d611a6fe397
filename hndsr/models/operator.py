"""Stage 2: a Fourier neural operator mapping the bicubic-upsampled LR image to a latent prior.

Layers build up as in neuraloperator: ``SpectralConv2d -> FNOBlock -> FourierNeuralOperator``.

One deliberate difference from the textbook FNO: the integral kernel has compact support. Each
spectral convolution is parameterised by the lowest ``modes`` Fourier coefficients of a
``kernel_size`` x ``kernel_size`` kernel (a band-limited, smooth kernel) and applied as a linear,
zero-padded convolution. Unlike a global truncated-mode kernel, it sees the same neighbourhood on a
training patch, a tile and a whole scene, so tiled inference equals whole-image inference and a
model trained on patches is not shifted out of distribution on a full scene. At 9x9 the direct
depthwise convolution is faster on CPU than the FFT route (measured: benchmarks/NOTES.md);
``fft_conv`` keeps the FFT route for reference and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hndsr.models.layers import FiLM, ScaleEmbedding, activation
from hndsr.resample import Taps, apply_taps, taps

GRIDS = ("latent", "lr")


@dataclass(frozen=True)
class LRInput:
    """The LR pixels behind a batch of output tiles: crops ``(B, 3, h, w)`` and the separable taps
    mapping crop rows/columns to the tiles' output rows/columns (shared by the batch). The taps are
    the bicubic canvas's own, so features follow the image exactly, tiled or whole."""

    lr: torch.Tensor
    rows: Taps
    cols: Taps

    @classmethod
    def whole(cls, lr: torch.Tensor, out_size: tuple[int, int]) -> LRInput:
        """Whole LR images upscaled to ``out_size`` (training patches, validation crops)."""
        h, w = int(lr.shape[-2]), int(lr.shape[-1])
        return cls(lr, taps(h, out_size[0]), taps(w, out_size[1]))

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` on the crops' grid -> ``(B, C, H, W)`` on the tiles' output grid."""
        # Narrow bands: the taps are 4 wide, so a dense band per 64 outputs wastes little.
        return apply_taps(apply_taps(x, self.rows, -2, chunk=64), self.cols, -1, chunk=64)

    def to(self, device: torch.device | str) -> LRInput:
        return LRInput(self.lr.to(device), self.rows, self.cols)


class SpectralConv2d(nn.Module):
    """Depthwise convolution with a band-limited kernel defined by its Fourier coefficients.

    ``(B, C, H, W) -> (B, C, H, W)``; ``forward`` and ``fft_conv`` agree (tested).
    """

    def __init__(self, channels: int, *, kernel_size: int = 9, modes: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if not 1 <= modes <= kernel_size // 2 + 1:
            raise ValueError(f"modes must be in [1, {kernel_size // 2 + 1}], got {modes}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.modes = modes
        # Coefficients for ky in {0..m-1} U {-(m-1)..-1} and kx in {0..m-1} (rfft half-plane).
        scale = 1.0 / (kernel_size * kernel_size)
        self.weight = nn.Parameter(scale * torch.randn(channels, 2 * modes - 1, modes, 2))

    def kernel(self) -> torch.Tensor:
        """The spatial kernel ``(C, k, k)``, centred."""
        k, m = self.kernel_size, self.modes
        coeffs = torch.view_as_complex(self.weight.float().contiguous())
        spectrum = torch.zeros(self.channels, k, k // 2 + 1, dtype=coeffs.dtype, device=coeffs.device)
        spectrum[:, :m, :m] = coeffs[:, :m]
        if m > 1:
            spectrum[:, -(m - 1) :, :m] = coeffs[:, m:]
        kernel = torch.fft.irfft2(spectrum, s=(k, k), norm="forward")
        return torch.fft.fftshift(kernel, dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel().to(x.dtype)[:, None]
        return F.conv2d(x, kernel, padding=self.kernel_size // 2, groups=self.channels)

    def fft_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The same operator through the FFT (cost independent of the kernel size)."""
        _, _, h, w = x.shape
        k = self.kernel_size
        size = (h + k - 1, w + k - 1)  # large enough that the circular convolution never wraps
        # FFTs in fp32 whatever the autocast dtype: fp16 FFTs lose too much precision.
        kernel = torch.flip(self.kernel(), dims=(-2, -1))
        x32 = x.float()
        spectrum = torch.fft.rfft2(x32, s=size) * torch.fft.rfft2(kernel, s=size)[None]
        full = torch.fft.irfft2(spectrum, s=size)
        half = k // 2
        return full[..., half : half + h, half : half + w].to(x.dtype)


class FNOBlock(nn.Module):
    """``x + L2 act(FiLM(L1 x + W K x))``: a residual block whose first layer adds the spectral
    integral operator ``K`` with pointwise channel mixing ``W`` (the FNO layer) to a local 3x3
    convolution ``L1``; FiLM conditions on the scale. ``spectral=False`` keeps the local path only
    (the ablation that measures what the spectral mixing adds)."""

    def __init__(
        self,
        width: int,
        *,
        cond_dim: int,
        kernel_size: int,
        modes: int,
        spectral: bool = True,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.local = nn.Conv2d(width, width, 3, padding=1)
        self.spectral = SpectralConv2d(width, kernel_size=kernel_size, modes=modes) if spectral else None
        self.mix = nn.Conv2d(width, width, 1) if spectral else None
        self.film = FiLM(cond_dim, width)
        self.act = activation(act)
        self.out = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.local(x)
        if self.spectral is not None and self.mix is not None:
            h = h + self.mix(self.spectral(x))
        return x + self.out(self.act(self.film(h, cond)))


class FourierNeuralOperator(nn.Module):
    """Bicubic image ``(B, 3, H, W)`` + scale ``(B,)`` -> latent prior ``(B, latent, H/f, W/f)``.

    ``grid="latent"`` (the seed's design): the body works on the latent grid (1/``factor`` of the
    output), on the bicubic image space-to-depth packed there. At x4 that is the LR grid; at x2 it is
    half as fine as the LR image, so every position must model 2x2 LR pixels.

    ``grid="lr"``: the body works on the LR image itself at every scale (``lr``, an :class:`LRInput`),
    like the plain CNNs that beat the seed at x2/x3. Its features are then carried to the output grid
    by the same bicubic taps as the image, space-to-depth packed onto the latent grid and projected
    by a 1x1 convolution (one linear map per output sub-pixel), so any real scale in [2, 4] maps
    through the same weights. EDSR-style body: no normalisation, a long skip around the blocks.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        latent_channels: int = 16,
        factor: int = 4,
        width: int = 64,
        depth: int = 4,
        kernel_size: int = 9,
        modes: int = 3,
        cond_dim: int = 64,
        spectral: bool = True,
        act: str = "relu",
        grid: str = "latent",
        upsample_channels: int = 0,
    ) -> None:
        super().__init__()
        if grid not in GRIDS:
            raise ValueError(f"operator grid must be one of {GRIDS}, got {grid!r}")
        self.factor = factor
        self.grid = grid
        self.scale_embedding = ScaleEmbedding(cond_dim)
        packed = in_channels * factor * factor
        self.lift = nn.Conv2d(in_channels if grid == "lr" else packed, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            FNOBlock(
                width, cond_dim=cond_dim, kernel_size=kernel_size, modes=modes, spectral=spectral, act=act
            )
            for _ in range(depth)
        )
        self.body_tail = nn.Conv2d(width, width, 3, padding=1)
        if grid == "lr":
            # Fewer channels carried to the output grid: resampling and packing cost per channel there.
            carried = upsample_channels or width
            self.narrow = nn.Conv2d(width, carried, 1) if carried != width else nn.Identity()
            self.project = nn.Conv2d(carried * factor * factor, latent_channels, 1)
        else:
            self.project = nn.Conv2d(width, latent_channels, 3, padding=1)

    def forward(self, up: torch.Tensor, scale: torch.Tensor, lr: LRInput | None = None) -> torch.Tensor:
        cond = self.scale_embedding(scale)
        if self.grid == "lr":
            if lr is None:
                raise ValueError("this operator works on the LR grid: pass lr (an LRInput)")
            lifted = self.lift(lr.lr)
        else:
            lifted = self.lift(F.pixel_unshuffle(up, self.factor))
        h = lifted
        for block in self.blocks:
            h = block(h, cond)
        features = self.body_tail(h) + lifted
        if self.grid == "lr":
            features = lr.upsample(self.narrow(features))  # type: ignore[union-attr]
            if features.shape[-2:] != up.shape[-2:]:
                got, want = tuple(features.shape[-2:]), tuple(up.shape[-2:])
                raise ValueError(f"the lr taps give {got} px, the tile is {want}")
            features = F.pixel_unshuffle(features, self.factor)
        return self.project(features)
