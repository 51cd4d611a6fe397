"""The drift job: a window of request statistics against the training reference, with Evidently.

``run_drift`` reads the reference (``catalog.parquet`` of ``hndsr prepare``: the features of its LR
tiles, the images the model is trained on, computed by :func:`monitoring.features.raster_features`
— or a features table written by ``hndsr drift reference``), reads the request records of the window
(the JSONL files or S3 objects the transformer's recorder writes), runs Evidently's
``DataDriftPreset`` with one drift method per feature, saves the HTML report and pushes the result to
a Prometheus Pushgateway. Fewer records than ``min_samples`` is a reported state
(``hndsr_drift_insufficient_data 1``, ``hndsr_drift_detected 0``), not an alarm.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monitoring.drift.detection import DriftResult, detect_drift
from monitoring.drift.pushgateway import push
from monitoring.drift.reference import DEFAULT_CACHE, load_reference
from monitoring.drift.report import report_html, write_text
from monitoring.drift.settings import DriftSettings, parse_window
from monitoring.drift.window import load_requests

logger = logging.getLogger(__name__)


def run_drift(
    *,
    reference: str,
    stats: str,
    window: str = "24h",
    report: str | None = None,
    pushgateway: str | None = None,
    schedule: str | None = None,
    settings: DriftSettings | None = None,
    now: float | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    model: str = "",
) -> DriftResult:
    """The whole job: reference, window, verdict, HTML report, push. ``schedule`` (default: the
    window) is how often the job runs; the staleness alert fires after twice that without a push."""
    settings = settings or DriftSettings()
    settings.check()
    window_s = parse_window(window)
    schedule_s = parse_window(schedule) if schedule else window_s
    ref = load_reference(reference, settings, cache_dir=cache_dir)
    current = load_requests(stats, window_s=window_s, now=now)
    result = detect_drift(ref, current, settings)
    if report:
        write_text(report, report_html(result, settings, window, reference=reference, model=model))
    if pushgateway:
        push(result, pushgateway, schedule_s=schedule_s)
    logger.info("drift: %s", result.summary())
    return result
