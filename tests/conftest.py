"""Shared fixtures: small generated images (tests never need ../shared/data) and a tiny model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from tooling import require_tool

TINY_MODEL = {
    "autoencoder": {"latent_channels": 4, "width": 16},
    "operator": {"width": 16, "depth": 2, "kernel_size": 5, "modes": 2, "cond_dim": 16},
    "diffusion": {"width": 16, "width_mult": [1, 2], "cond_dim": 32},
}


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_tool(name, install): the test runs this tool (tests/tooling.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The one skip policy (tests/tooling.py) for tests marked ``needs_tool``, before any fixture
    (a module-scoped server fixture would otherwise fail first)."""
    for mark in item.iter_markers("needs_tool"):
        require_tool(*mark.args, **mark.kwargs)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hr"
    root.mkdir()
    for i in range(10):
        Image.fromarray(synthetic_aerial((96 + 8 * (i % 3), 104), seed=i)).save(root / f"img_{i:02d}.png")
    return root


@pytest.fixture
def tiny_model_config() -> dict[str, dict[str, object]]:
    return {k: dict(v) for k, v in TINY_MODEL.items()}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """An HTTP client for the tests of real server processes (generous timeout: 2 loaded cores)."""
    with httpx.Client(timeout=120) as client:
        yield client
