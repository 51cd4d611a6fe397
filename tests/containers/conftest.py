"""Fixtures of the container tests: the three images, built from this tree once per session."""

from __future__ import annotations

import pytest
from podmanstack import build_images


@pytest.fixture(scope="session", name="images")
def images_fixture() -> dict[str, str]:
    """kind -> image reference, built from this tree by `make images`'s script."""
    return build_images()
