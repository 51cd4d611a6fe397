"""Generated test data every family uses: an aerial-like image generator and a tiny model config
(tests never need ../shared/data)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TINY_MODEL = {
    "autoencoder": {"latent_channels": 4, "width": 16},
    "operator": {"width": 16, "depth": 2, "kernel_size": 5, "modes": 2, "cond_dim": 16},
    "diffusion": {"width": 16, "width_mult": [1, 2], "cond_dim": 32},
}
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def write_tiny_params(path: Path, train_dir: Path, **stage: Any) -> Path:
    """A params file training the tiny model from ``train_dir`` on the CPU, every stage with
    ``stage`` (steps, batch_size, lr, warmup_steps, steps_per_epoch)."""
    params = {
        "data": {"train_dir": str(train_dir), "patch_size": 48, "val_images": 2, "val_crop": 48},
        "model": TINY_MODEL,
        "train": {"seed": 0, "device": "cpu", "autoencoder": stage, "operator": stage, "diffusion": stage},
    }
    path.write_text(yaml.safe_dump(params))
    return path


def tiny_pipeline_params(evaluate_limit: int) -> dict[str, Any]:
    """params.yaml with the tiny model on 48 px tiles and a ``ci`` profile that trains each stage 2
    steps on the CPU and scores ``evaluate_limit`` held-out tiles: the pipeline tests' recipe."""
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["data"].update(patch_size=48, val_crop=48, val_images=2, val_fraction=0.2, test_fraction=0.3)
    raw["model"] = TINY_MODEL
    raw["prepare"]["tile_size"] = 48
    tiny = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "steps_per_epoch": 1}
    raw["profiles"]["ci"] = {"train.device": "cpu", "train.threads": 1, "evaluate.limit": evaluate_limit} | {
        f"train.{stage}.{key}": value
        for stage in ("autoencoder", "operator", "diffusion")
        for key, value in tiny.items()
    }
    return raw


def synthetic_aerial(size: tuple[int, int], seed: int) -> np.ndarray:
    """A deterministic 'aerial-like' RGB uint8 image: fields, roads, texture; (H, W, 3)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(6):
        fy, fx, ph = rng.uniform(0.01, 0.12), rng.uniform(0.01, 0.12), rng.uniform(0, 2 * math.pi)
        img += rng.uniform(0.05, 0.15, 3) * np.sin(fy * yy + fx * xx + ph)[..., None]
    for _ in range(3):  # straight "roads"
        if rng.random() < 0.5:
            y0 = rng.integers(0, h)
            img[max(0, y0 - 2) : y0 + 2] += 0.3
        else:
            x0 = rng.integers(0, w)
            img[:, max(0, x0 - 2) : x0 + 2] += 0.3
    img += rng.normal(0, 0.03, img.shape)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img * 255).astype(np.uint8)
