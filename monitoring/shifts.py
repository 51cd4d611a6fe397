"""Synthetic distribution shifts of RGB imagery, for the drift tests and the drift benchmark.

Each takes (3, H, W) float values in [0, 1] and a strength, and returns a new array.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

HAZE_AIRLIGHT = 0.85  # grey-white veil of haze / thin cloud


def darken(rgb: np.ndarray, strength: float) -> np.ndarray:
    """Underexposure: every value scaled by ``1 - strength``."""
    return (rgb * (1.0 - strength)).astype(np.float32)


def blur(rgb: np.ndarray, strength: float) -> np.ndarray:
    """Defocus / a coarser sensor: Gaussian blur of ``strength`` pixels (sigma) per band."""
    return np.stack([gaussian_filter(band, sigma=strength, mode="reflect") for band in rgb]).astype(
        np.float32
    )


def haze(rgb: np.ndarray, strength: float) -> np.ndarray:
    """Atmospheric haze: ``(1 - strength) * rgb + strength * airlight`` (lower contrast, brighter)."""
    return ((1.0 - strength) * rgb + strength * HAZE_AIRLIGHT).astype(np.float32)


SHIFTS = {"darken": darken, "blur": blur, "haze": haze}
#: Two strengths per shift (mild, strong), as measured in the README.
STRENGTHS = {"darken": (0.15, 0.35), "blur": (0.7, 1.5), "haze": (0.15, 0.35)}
