"""The per-feature statistics: normed Wasserstein distance, the K-S p-value, and this project's
``wasserstein_ks`` registered as an Evidently test.

``wasserstein_ks`` (the default) calls a feature drifted when its distribution moved by a relevant
amount *and* the move is statistically real: normed Wasserstein distance (Evidently's "wasserstein":
the distance divided by the reference's std) at least ``stattest_threshold`` (0.25) and two-sample
K-S p-value below ``threshold`` (0.05). K-S alone flags irrelevant differences in large samples; a
distance alone is noisy in small windows (measured: benchmarks/NOTES.md). Evidently's own choice
(``auto``) and any Evidently test by name (``ks``, ``wasserstein``, ``psi``, ...) can be chosen
instead. The K-S p-values are computed for every method (``hndsr_drift_feature_pvalue``), the chosen
method's score is ``hndsr_drift_feature_score``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: This project's drift method: normed Wasserstein >= threshold and K-S p-value < DriftSettings.threshold.
WASSERSTEIN_KS = "wasserstein_ks"
#: Thresholds of the methods when --stattest-threshold is not given (others: Evidently's default).
DEFAULT_STATTEST_THRESHOLDS = {WASSERSTEIN_KS: 0.25}


def normed_wasserstein(reference: Any, current: Any) -> float:
    """Evidently's "wasserstein" score: the distance divided by the reference's std (at least 0.001)."""
    from scipy import stats

    norm = max(float(np.std(reference)), 0.001)
    return float(stats.wasserstein_distance(reference, current)) / norm


def register_wasserstein_ks(alpha: float) -> str:
    """Register (once per ``alpha``) the Evidently test ``wasserstein_ks``: score = normed Wasserstein
    distance; drifted when the score reaches the threshold and the K-S p-value is below ``alpha``."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        _registered_stat_tests,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType

    name = f"{WASSERSTEIN_KS}_p{alpha:g}"
    if name in _registered_stat_tests:
        return name

    def wasserstein_ks(
        reference: pd.Series, current: pd.Series, _type: Any, threshold: float
    ) -> tuple[float, bool]:
        distance = normed_wasserstein(reference, current)
        return distance, bool(distance >= threshold and ks_pvalue(reference, current) < alpha)

    register_stattest(
        StatTest(
            name=name,
            display_name=f"Wasserstein distance (normed), with K-S p < {alpha:g}",
            allowed_feature_types=[ColumnType.Numerical],
            default_threshold=DEFAULT_STATTEST_THRESHOLDS[WASSERSTEIN_KS],
        ),
        wasserstein_ks,
    )
    return name


def ks_pvalue(reference: Any, current: Any) -> float:
    """Two-sample K-S p-value; two equal constants (e.g. no nodata anywhere) are no drift."""
    from scipy import stats

    if np.ptp(np.asarray(reference)) == 0 and np.ptp(np.asarray(current)) == 0:  # constant, e.g. no nodata
        return 1.0 if float(np.asarray(reference)[0]) == float(np.asarray(current)[0]) else 0.0
    return float(stats.ks_2samp(reference, current).pvalue)
