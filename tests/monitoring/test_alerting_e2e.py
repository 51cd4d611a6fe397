"""End to end on real servers: request statistics -> drift job -> Pushgateway -> Prometheus, whose
drift alert goes pending/firing on shifted imagery and stays silent on unshifted imagery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from drift_helpers import drift_last_hour
from promstack import Process, alerts, fast_rules, query, start_prometheus, start_pushgateway

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules" / "hndsr-alerts.yml"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    gateway = start_pushgateway(tmp_path)
    try:
        prometheus = start_prometheus(
            tmp_path, fast_rules(RULES, tmp_path), [gateway.url.removeprefix("http://")]
        )
        try:
            yield gateway, prometheus
        finally:
            prometheus.stop()
    finally:
        gateway.stop()


def _wait(condition: Callable[[], bool], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _drift_alert(prometheus: Process) -> list[dict]:
    return [a for a in alerts(prometheus) if a["labels"]["alertname"] == "HNDSRDataDrift"]


@pytest.mark.parametrize("shift", ["darken", "blur", "haze"])
def test_shifted_imagery_fires_the_drift_alert(
    stack: tuple[Process, Process],
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    tmp_path: Path,
    shift: str,
) -> None:
    gateway, prometheus = stack
    strength = {"darken": 0.35, "blur": 1.5, "haze": 0.35}[shift]
    stats = write_requests(60, shift, strength)
    result = drift_last_hour(drift_catalog, stats, tmp_path, pushgateway=gateway.url)
    assert result.detected
    assert _wait(lambda: any(a["state"] in ("pending", "firing") for a in _drift_alert(prometheus))), alerts(
        prometheus
    )
    pvalues = {
        r["metric"]["feature"]: float(r["value"][1]) for r in query(prometheus, "hndsr_drift_feature_pvalue")
    }
    assert set(pvalues) == set(result.pvalues) and min(pvalues.values()) < 0.05


def test_unshifted_imagery_raises_no_alert(
    stack: tuple[Process, Process],
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    tmp_path: Path,
) -> None:
    gateway, prometheus = stack
    stats = write_requests(60)
    result = drift_last_hour(drift_catalog, stats, tmp_path, pushgateway=gateway.url)
    assert not result.detected
    # Prometheus has scraped the verdict (0) and evaluated the rules on it: still no alert.
    assert _wait(lambda: [float(r["value"][1]) for r in query(prometheus, "hndsr_drift_detected")] == [0.0])
    time.sleep(3)  # a few more evaluation rounds
    firing = [a for a in alerts(prometheus) if a["labels"]["alertname"] != "HNDSRDriftJobAbsent"]
    assert firing == []
    assert float(query(prometheus, "hndsr_drift_window_size")[0]["value"][1]) == 60
