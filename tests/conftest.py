"""Fixtures every test family shares: generated images, a tiny model config, an HTTP client; the real S3
server (lakeserver) is a plugin for the families that use it. Each folder's conftest.py holds its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from synthetic import TINY_MODEL, synthetic_aerial
from tooling import require_tool

pytest_plugins = ["lakeserver"]


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
