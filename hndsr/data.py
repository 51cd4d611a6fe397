"""Training data: HR image discovery, the hash split, and on-the-fly (HR, bicubic, scale) patch batches."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hndsr.errors import InputError
from hndsr.files import sha256_file
from hndsr.image_read import read_image
from hndsr.models.operator import LRInput
from hndsr.raster import SUPPORTED_SUFFIXES
from hndsr.resample import lr_size, resize

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"data directory {root} does not exist: pass a folder of HR images")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def split_of(sha256: str, *, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash: the same image lands in the same split everywhere."""
    u = int(sha256[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def images_in_split(
    root: str | Path, split: str | None, *, val_fraction: float, test_fraction: float
) -> list[Path]:
    paths = list_images(root)
    if split is None or split == "all":
        return paths
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} or all")
    return [
        p
        for p in paths
        if split_of(sha256_file(p), val_fraction=val_fraction, test_fraction=test_fraction) == split
    ]


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(read_image(path).rgb().copy())


@dataclass
class Batch:
    hr: torch.Tensor  # (B, 3, P, P)
    up: torch.Tensor  # (B, 3, P, P): bicubic up of the bicubic-down HR
    scale: torch.Tensor  # (B,) the effective scale P / lr_size
    lr: LRInput | None = None  # the LR patches behind ``up`` (models that work on the LR grid)

    def to(self, device: torch.device) -> Batch:
        lr = self.lr.to(device) if self.lr is not None else None
        return Batch(hr=self.hr.to(device), up=self.up.to(device), scale=self.scale.to(device), lr=lr)


class PatchSampler:
    """Random HR crops with flips/rotations, one random scale in [min, max] per batch.

    Images are held in memory as uint8 (or float16 for deeper sources) to bound RAM.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        patch_size: int,
        scale_min: float,
        scale_max: float,
        seed: int,
        scale_power: float = 1.0,
        fixed_lr_patch: bool = False,
    ) -> None:
        if not paths:
            raise InputError("no training images found: check data.train_dir and the split fractions")
        self.patch = patch_size
        self.scale_min, self.scale_max = scale_min, scale_max
        self.scale_power = scale_power
        self.fixed_lr_patch = fixed_lr_patch
        self.images: list[torch.Tensor] = []
        for p in paths:
            img = load_rgb(p)
            if min(img.shape[-2:]) < patch_size:
                logger.warning("skipping %s: smaller than the %d px training patch", p, patch_size)
                continue
            self.images.append((img * 255.0).round().to(torch.uint8))
        if not self.images:
            raise InputError(f"every training image is smaller than the {patch_size} px patch")
        areas = torch.tensor([float(i.shape[-1] * i.shape[-2]) for i in self.images])
        self.weights = areas / areas.sum()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def sample(self, batch_size: int, rows: slice | None = None) -> Batch:
        """A batch of ``batch_size`` patches, or only its ``rows`` (one rank's shard of a global batch).

        The generator advances exactly as for the whole batch, so ranks sharing a seed stay in step
        and the union of their shards is the single-process batch.
        """
        g = self.generator
        p = self.patch
        scale = None
        if self.fixed_lr_patch:  # LR patch = patch / scale_max at every scale
            scale = self._scale()
            p = max(16, 4 * round(self.patch * scale / self.scale_max / 4))
        idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=g)
        keep = range(batch_size)[rows] if rows is not None else range(batch_size)
        crops = []
        for row, i in enumerate(idx.tolist()):
            img = self.images[i]
            y = int(torch.randint(0, img.shape[-2] - p + 1, (1,), generator=g))
            x = int(torch.randint(0, img.shape[-1] - p + 1, (1,), generator=g))
            crop = img[:, y : y + p, x : x + p]
            k = int(torch.randint(0, 8, (1,), generator=g))
            if row not in keep:
                continue
            if k & 4:
                crop = crop.flip(-1)
            crops.append(torch.rot90(crop, k & 3, dims=(-2, -1)))
        hr = torch.stack(crops).float() / 255.0
        if scale is None:  # drawn last: the stream of the recipes before fixed_lr_patch
            scale = self._scale()
        return make_batch(hr, scale)

    def _scale(self) -> float:
        u = float(torch.rand((), generator=self.generator))
        return self.scale_min + u ** (1.0 / self.scale_power) * (self.scale_max - self.scale_min)


def make_batch(hr: torch.Tensor, scale: float) -> Batch:
    """Degrade HR patches by ``scale`` and upsample back: the exact input the model sees at inference."""
    p_h, p_w = hr.shape[-2:]
    lr = resize(hr, lr_size((p_h, p_w), scale), antialias=True)
    up = resize(lr, (p_h, p_w), antialias=True)
    effective = 0.5 * (p_h / lr.shape[-2] + p_w / lr.shape[-1])
    scale_t = torch.full((hr.shape[0],), effective)
    return Batch(hr=hr, up=up, scale=scale_t, lr=LRInput.whole(lr, (p_h, p_w)))


def validation_batches(
    paths: list[Path], *, crop: int, scales: tuple[float, ...], limit: int
) -> dict[float, Batch]:
    """Fixed centre crops of validation images, one batch per scale (crop a multiple of 12 fits x2/x3/x4)."""
    crops = []
    for p in paths[:limit] if limit else paths:
        img = load_rgb(p)
        h, w = img.shape[-2:]
        c = min(crop, h, w) // 12 * 12
        if c < 48:
            continue
        y, x = (h - c) // 2, (w - c) // 2
        crops.append(img[:, y : y + c, x : x + c])
    if not crops:
        return {}
    size = min(c.shape[-1] for c in crops)
    hr = torch.stack([c[:, :size, :size] for c in crops])
    return {s: make_batch(hr, s) for s in scales if math.isfinite(s)}
