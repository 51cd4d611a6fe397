"""The drift job over the last hour of request statistics, as the tests run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitoring.drift.detection import DriftResult
from monitoring.drift.job import run_drift


def drift_last_hour(catalog: Path, stats: Path, cache_dir: Path, **options: Any) -> DriftResult:
    """``run_drift`` of ``stats`` against the reference built from ``catalog`` (``options``: report,
    pushgateway, model, ...)."""
    return run_drift(reference=str(catalog), stats=str(stats), window="1h", cache_dir=cache_dir, **options)
