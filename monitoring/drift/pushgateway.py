"""The drift verdict as Prometheus metrics on a Pushgateway (what the alert rules read)."""

from __future__ import annotations

from typing import Any

from hndsr.errors import ConfigError
from monitoring.drift.detection import DriftResult

PUSH_JOB = "hndsr_drift"


def push_registry(result: DriftResult, *, schedule_s: float) -> Any:
    """The Pushgateway metrics of one run, in their own registry."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge(
        "hndsr_drift_last_run_timestamp_seconds",
        "End of the last drift job run (Unix time).",
        registry=registry,
    ).set(result.timestamp)
    Gauge("hndsr_drift_window_size", "Request records in the window of the last run.", registry=registry).set(
        result.window_size
    )
    Gauge(
        "hndsr_drift_reference_size", "Reference images the last run compared against.", registry=registry
    ).set(result.reference_size)
    Gauge(
        "hndsr_drift_insufficient_data",
        "1 when the window held too few records for a verdict (no drift reported).",
        registry=registry,
    ).set(1.0 if result.state == "insufficient_data" else 0.0)
    Gauge(
        "hndsr_drift_detected",
        "1 when the share of drifted features reached the threshold.",
        registry=registry,
    ).set(1.0 if result.detected else 0.0)
    Gauge(
        "hndsr_drift_schedule_seconds",
        "Interval the drift job is scheduled at (staleness alert).",
        registry=registry,
    ).set(schedule_s)
    if result.drift_share is not None:
        Gauge("hndsr_drift_share", "Share of features whose distribution drifted.", registry=registry).set(
            result.drift_share
        )
        per_feature(
            registry,
            "hndsr_drift_feature_pvalue",
            "Kolmogorov-Smirnov p-value per feature (computed whatever the drift method).",
            result.pvalues,
        )
        per_feature(
            registry,
            "hndsr_drift_feature_score",
            "Drift method's score per feature (wasserstein_ks: normed Wasserstein distance).",
            result.scores,
        )
    return registry


def per_feature(registry: Any, name: str, documentation: str, values: dict[str, float]) -> None:
    """A gauge labelled by feature, one sample per feature."""
    from prometheus_client import Gauge

    gauge = Gauge(name, documentation, ["feature"], registry=registry)
    for feature, value in values.items():
        gauge.labels(feature=feature).set(value)


def push(result: DriftResult, gateway: str, *, schedule_s: float, job: str = PUSH_JOB) -> None:
    """Replace the job's metric group on the Pushgateway (stale p-values never linger)."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(gateway, job=job, registry=push_registry(result, schedule_s=schedule_s), timeout=30)
    except OSError as exc:
        raise ConfigError(f"cannot push to the Pushgateway at {gateway}: {exc}; check --pushgateway") from exc
