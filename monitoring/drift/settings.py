"""What the drift job compares and how: the window, the method and its thresholds, the reference."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hndsr.errors import InputError
from monitoring.drift.stattests import DEFAULT_STATTEST_THRESHOLDS, WASSERSTEIN_KS, register_wasserstein_ks

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds."""
    match = _WINDOW.match(text)
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"window {text!r} is not a positive duration like 30m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class DriftSettings:
    # Share of drifted features that makes the window drifted: 4 of the 12.
    drift_share: float = 0.3
    threshold: float = 0.05  # K-S p-value significance (wasserstein_ks; ks's threshold by default)
    stattest: str = WASSERSTEIN_KS  # per-feature method: wasserstein_ks | auto | an Evidently test name
    stattest_threshold: float | None = None  # None: 0.25 (wasserstein_ks), threshold (ks), Evidently
    min_samples: int = 50  # fewer request records in the window: insufficient data, no verdict
    reference_sample: int = 5000  # reference rows used at most (random, seeded)
    split: str = "train"  # catalog split of the reference ("all": every split)
    images: str = "lr"  # "lr": the catalog's LR tiles (what requests look like); "hr": its HR tiles
    # wasserstein_ks: raise each feature's distance threshold to the 95th percentile of the distances
    # between held-out groups of the reference's own sources and the rest (see calibrate_thresholds)
    calibrate: bool = True
    calibration_quantile: float = 0.95
    calibration_repeats: int = 100

    def check(self) -> None:
        if not 0.0 < self.drift_share <= 1.0:
            raise InputError(f"drift share {self.drift_share} must be in (0, 1]")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"p-value threshold {self.threshold} must be in (0, 1)")
        if self.min_samples < 2:
            raise InputError(f"min samples {self.min_samples} must be at least 2 (two-sample tests)")
        if self.images not in ("lr", "hr"):
            raise InputError(f"reference images {self.images!r}: use lr or hr")
        if self.stattest == "auto" and self.stattest_threshold is not None:
            raise InputError(
                "--stattest-threshold needs an explicit --stattest: auto picks K-S or Wasserstein per "
                "reference size, whose thresholds mean different things"
            )
        if self.stattest_threshold is not None and self.stattest_threshold <= 0:
            raise InputError(f"stattest threshold {self.stattest_threshold} must be positive")
        if self.stattest not in ("auto", WASSERSTEIN_KS):
            from evidently.legacy.calculations.stattests.registry import (
                StatTestNotFoundError,
                get_registered_stattest,
            )
            from evidently.legacy.core import ColumnType

            try:
                get_registered_stattest(self.stattest, ColumnType.Numerical)
            except (StatTestNotFoundError, ValueError) as exc:
                raise InputError(
                    f"stattest {self.stattest!r} is not an Evidently test for numerical features ({exc}); "
                    f"use {WASSERSTEIN_KS}, auto, ks, wasserstein, psi, ..."
                ) from exc

    def method(self) -> str | None:
        """The name Evidently gets (None: its own choice per column)."""
        if self.stattest == "auto":
            return None
        if self.stattest == WASSERSTEIN_KS:
            return register_wasserstein_ks(self.threshold)
        return self.stattest

    def method_threshold(self) -> float | None:
        if self.stattest_threshold is not None:
            return self.stattest_threshold
        if self.stattest == "ks":
            return self.threshold
        return DEFAULT_STATTEST_THRESHOLDS.get(self.stattest)
