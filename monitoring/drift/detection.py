"""The verdict: Evidently's ``DataDriftPreset`` per feature, with distance thresholds calibrated on
the reference's own sources."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hndsr.errors import InputError
from monitoring.drift.settings import DriftSettings
from monitoring.drift.stattests import WASSERSTEIN_KS, ks_pvalue, normed_wasserstein
from monitoring.features import DRIFT_FEATURES


@dataclass
class DriftResult:
    state: str  # "ok" | "drift" | "insufficient_data"
    window_size: int
    reference_size: int
    drift_share: float | None = None
    detected: bool = False
    pvalues: dict[str, float] = field(default_factory=dict)  # K-S p-value per feature (every method)
    drifted: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # the method's score (distance or p-value)
    methods: dict[str, str] = field(default_factory=dict)  # the method per feature (Evidently's name)
    thresholds: dict[str, float] = field(default_factory=dict)  # the score threshold per feature
    reference_sources: int = 0  # distinct source images the reference tiles come from
    timestamp: float = field(default_factory=time.time)
    snapshot: Any = None  # the Evidently snapshot (None without a verdict)

    def metric_values(self) -> dict[str, float]:
        """Flat numbers for KFP metrics (the Pushgateway gets the same from :func:`push_registry`)."""
        values = {
            "window_size": float(self.window_size),
            "reference_size": float(self.reference_size),
            "detected": 1.0 if self.detected else 0.0,
            "insufficient_data": 1.0 if self.state == "insufficient_data" else 0.0,
        }
        if self.drift_share is not None:
            values["drift_share"] = self.drift_share
        return (
            values
            | {f"pvalue_{k}": v for k, v in self.pvalues.items()}
            | {f"score_{k}": v for k, v in self.scores.items()}
        )

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "window_size": self.window_size,
            "reference_size": self.reference_size,
            "drift_share": self.drift_share,
            "detected": self.detected,
            "drifted_features": self.drifted,
            "pvalues": self.pvalues,
            "scores": self.scores,
            "methods": self.methods,
            "thresholds": self.thresholds,
            "reference_sources": self.reference_sources,
            "timestamp": self.timestamp,
        }


def calibrate_thresholds(
    reference: pd.DataFrame,
    columns: list[str],
    base: float,
    *,
    window_size: int,
    settings: DriftSettings,
    seed: int = 0,
) -> dict[str, float]:
    """Each feature's distance threshold: at least ``base``, raised to the ``calibration_quantile`` of
    the distances that unchanged imagery from sources the reference never saw scores by scene-to-scene
    variation alone.

    Tiles of one source image are not independent samples, so a window of unchanged tiles from other
    scenes differs from the reference by scene variation alone (a false alarm at a fixed threshold;
    measured: benchmarks/NOTES.md). The null distances are measured on the reference itself, by
    source: ``calibration_repeats`` times, hold out a random 20% of its sources and score all their
    rows against the remaining sources. With many sources the threshold stays at ``base``
    (small-window noise is the K-S condition's job); with few it rises to what scene variation
    reaches. ``window_size`` is part of the cache key only. Without a ``source`` column every row
    counts as its own source. Fewer than 5
    sources: ``base`` (nothing to calibrate)."""
    key = (
        int(
            pd.util.hash_pandas_object(
                reference[[*columns, *(["source"] if "source" in reference else [])]]
            ).sum()
        ),
        tuple(columns),
        base,
        window_size,
        settings.calibration_quantile,
        settings.calibration_repeats,
        seed,
    )
    if key not in _CALIBRATIONS:
        if len(_CALIBRATIONS) > 64:
            _CALIBRATIONS.clear()
        _CALIBRATIONS[key] = _calibrate(
            reference, columns, base, window_size=window_size, settings=settings, seed=seed
        )
    return dict(_CALIBRATIONS[key])


_CALIBRATIONS: dict[tuple[Any, ...], dict[str, float]] = {}  # the same reference and window size: once


def _calibrate(
    reference: pd.DataFrame,
    columns: list[str],
    base: float,
    *,
    window_size: int,
    settings: DriftSettings,
    seed: int,
) -> dict[str, float]:
    groups = (
        reference["source"].astype(str).to_numpy()
        if "source" in reference
        else np.arange(len(reference)).astype(str)
    )
    sources = np.unique(groups)
    if len(sources) < 5:
        return {c: base for c in columns}
    rng = np.random.default_rng(seed)
    held_count = max(1, round(0.2 * len(sources)))
    null: dict[str, list[float]] = {c: [] for c in columns}
    values = {c: reference[c].astype(float).to_numpy() for c in columns}
    for _ in range(settings.calibration_repeats):
        held = np.isin(groups, rng.choice(sources, held_count, replace=False))
        window = np.flatnonzero(held)  # all their rows: the scene-to-scene part, not sampling noise
        rest = ~held
        for c in columns:
            null[c].append(normed_wasserstein(values[c][rest], values[c][window]))
    return {c: max(base, float(np.quantile(null[c], settings.calibration_quantile))) for c in columns}


def detect_drift(
    reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings, *, evidently: bool = True
) -> DriftResult:
    """Evidently ``DataDriftPreset`` over :data:`DRIFT_FEATURES` with ``settings``' method per feature,
    plus the K-S p-value of every feature. ``evidently=False`` runs the same per-feature tests without
    building Evidently's report (no snapshot; the benchmark's thousands of windows)."""
    settings.check()
    if len(reference) < settings.min_samples:
        raise InputError(
            f"the reference has {len(reference)} images, fewer than --min-samples {settings.min_samples}"
        )
    if len(current) < settings.min_samples:
        return DriftResult(state="insufficient_data", window_size=len(current), reference_size=len(reference))
    from evidently import Report
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.presets import DataDriftPreset

    columns = list(DRIFT_FEATURES)
    ref, cur = reference[columns].astype(float), current[columns].astype(float)
    method, threshold = settings.method(), settings.method_threshold()
    thresholds: dict[str, float] = {}
    if settings.stattest == WASSERSTEIN_KS and threshold is not None:
        thresholds = (
            calibrate_thresholds(reference, columns, threshold, window_size=len(current), settings=settings)
            if settings.calibrate
            else dict.fromkeys(columns, threshold)
        )
    preset = DataDriftPreset(
        columns=columns,
        drift_share=settings.drift_share,
        num_method=method,
        num_threshold=threshold,
        per_column_threshold=thresholds or None,
    )
    pvalues: dict[str, float] = {}
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    drifted: list[str] = []
    with warnings.catch_warnings():  # constant columns (no nodata anywhere) warn; their p-value is 1
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset]).run(current_data=cur, reference_data=ref) if evidently else None
        for column in columns:  # the same tests Evidently ran, for the verdict per feature
            test = get_stattest(ref[column], cur[column], ColumnType.Numerical, method)
            outcome = test(ref[column], cur[column], ColumnType.Numerical, thresholds.get(column, threshold))
            scores[column] = float(outcome.drift_score)
            methods[column] = test.name
            pvalues[column] = ks_pvalue(ref[column], cur[column])
            if outcome.drifted:
                drifted.append(column)
    share = len(drifted) / len(columns)
    for metric in snapshot.dict()["metrics"] if snapshot is not None else []:
        config = metric.get("config", {})
        if config.get("type", "").endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    detected = share >= settings.drift_share
    return DriftResult(
        state="drift" if detected else "ok",
        window_size=len(current),
        reference_size=len(reference),
        drift_share=share,
        detected=detected,
        pvalues=pvalues,
        drifted=drifted,
        scores=scores,
        methods=methods,
        thresholds=thresholds,
        reference_sources=int(reference["source"].nunique()) if "source" in reference else len(reference),
        snapshot=snapshot,
    )


# ---------------------------------------------------------------------------------- outputs
