"""The drift job: a window of request statistics against the training reference, with Evidently.

``run_drift`` reads the reference (``catalog.parquet`` of ``hndsr prepare``: the features of its LR
tiles, the images the model is trained on, computed by :func:`monitoring.features.raster_features`
— or a features table written by ``hndsr drift reference``), reads the request records of the window
(the JSONL files or S3 objects the transformer's recorder writes), runs Evidently's
``DataDriftPreset`` with one drift method per feature, saves the HTML report and pushes the result to
a Prometheus Pushgateway. Fewer records than ``min_samples`` is a reported state
(``hndsr_drift_insufficient_data 1``, ``hndsr_drift_detected 0``), not an alarm.

The default method, ``wasserstein_ks``, calls a feature drifted when its distribution moved by a
relevant amount *and* the move is statistically real: normed Wasserstein distance (Evidently's
"wasserstein": the distance divided by the reference's std) at least ``stattest_threshold`` (0.25)
and two-sample K-S p-value below ``threshold`` (0.05). A K-S test alone flags practically irrelevant
differences once the samples are large (held-out RSSCN7 read as drift); a distance alone is noisy in
small windows (at 50 requests the third-largest normed distance of a sample *of the reference itself*
reaches 0.32 in 5% of draws). Evidently's own choice (``auto``: K-S up to 1000 reference rows, normed
Wasserstein at 0.1 above) and any Evidently test by name (``ks``, ``wasserstein``, ``psi``, ...) can
be chosen instead. The K-S p-values are computed for every method (``hndsr_drift_feature_pvalue``),
the chosen method's score is ``hndsr_drift_feature_score``.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from hndsr.errors import ConfigError, InputError
from hndsr.imageio import read_image
from monitoring.features import CONTEXT_FIELDS, DRIFT_FEATURES, raster_features

logger = logging.getLogger(__name__)

PUSH_JOB = "hndsr_drift"
DEFAULT_CACHE = Path.home() / ".cache" / "hndsr" / "drift"
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> seconds."""
    match = _WINDOW.match(text)
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"window {text!r} is not a positive duration like 30m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


#: This project's drift method: normed Wasserstein >= threshold and K-S p-value < DriftSettings.threshold.
WASSERSTEIN_KS = "wasserstein_ks"
#: Thresholds of the methods when --stattest-threshold is not given (others: Evidently's default).
DEFAULT_STATTEST_THRESHOLDS = {WASSERSTEIN_KS: 0.25}


@dataclass
class DriftSettings:
    drift_share: float = 0.3  # share of drifted features that makes the dataset drifted
    threshold: float = 0.05  # K-S p-value significance (wasserstein_ks; ks's threshold by default)
    stattest: str = WASSERSTEIN_KS  # per-feature method: wasserstein_ks | auto | an Evidently test name
    stattest_threshold: float | None = None  # None: 0.25 (wasserstein_ks), threshold (ks), Evidently
    min_samples: int = 50  # fewer request records in the window: insufficient data, no verdict
    reference_sample: int = 5000  # reference rows used at most (random, seeded)
    split: str = "train"  # catalog split of the reference ("all": every split)
    images: str = "lr"  # "lr": the catalog's LR tiles (what requests look like); "hr": its HR tiles

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
            return _register_wasserstein_ks(self.threshold)
        return self.stattest

    def method_threshold(self) -> float | None:
        if self.stattest_threshold is not None:
            return self.stattest_threshold
        if self.stattest == "ks":
            return self.threshold
        return DEFAULT_STATTEST_THRESHOLDS.get(self.stattest)


def _register_wasserstein_ks(alpha: float) -> str:
    """Register (once per ``alpha``) the Evidently test ``wasserstein_ks``: score = normed Wasserstein
    distance; drifted when the score reaches the threshold and the K-S p-value is below ``alpha``."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        _registered_stat_tests,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType
    from scipy import stats

    name = f"{WASSERSTEIN_KS}_p{alpha:g}"
    if name in _registered_stat_tests:
        return name

    def wasserstein_ks(
        reference: pd.Series, current: pd.Series, _type: Any, threshold: float
    ) -> tuple[float, bool]:
        norm = max(float(np.std(reference)), 0.001)  # as Evidently's "wasserstein"
        distance = float(stats.wasserstein_distance(reference, current)) / norm
        return distance, bool(distance >= threshold and _ks_pvalue(reference, current) < alpha)

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


def _ks_pvalue(reference: Any, current: Any) -> float:
    from scipy import stats

    if np.ptp(np.asarray(reference)) == 0 and np.ptp(np.asarray(current)) == 0:  # constant, e.g. no nodata
        return 1.0 if float(np.asarray(reference)[0]) == float(np.asarray(current)[0]) else 0.0
    return float(stats.ks_2samp(reference, current).pvalue)


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
            "timestamp": self.timestamp,
        }


# ---------------------------------------------------------------------------------- reference


def features_table(rows: Iterator[dict[str, float]] | list[dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    missing = [c for c in DRIFT_FEATURES if c not in frame.columns]
    if missing:
        raise InputError(f"statistics lack the features {', '.join(missing)}")
    return frame


def reference_from_catalog(
    catalog: pd.DataFrame, root: Path, settings: DriftSettings, *, fetch: Any = None
) -> pd.DataFrame:
    """Features of the catalog's tiles (LR tiles of every scale, or the HR tiles) under ``root``;
    ``fetch(rel) -> Path`` supplies files that are not local (S3)."""
    rows = catalog if settings.split == "all" else catalog[catalog["split"] == settings.split]
    if rows.empty:
        splits = sorted(set(catalog["split"])) if "split" in catalog else []
        raise InputError(
            f"the catalog has no {settings.split!r} tiles (splits: {', '.join(splits) or 'none'}); "
            "choose another --split or prepare the data first"
        )
    columns = sorted(c for c in catalog.columns if c.startswith("lr_x")) if settings.images == "lr" else []
    if settings.images == "lr" and not columns:
        raise InputError("the catalog has no lr_x<scale> columns: use --reference-images hr")
    files = [f for c in columns for f in rows[c].dropna()] if columns else list(rows["filename"])
    if len(files) > settings.reference_sample:
        picked = np.random.default_rng(0).choice(len(files), settings.reference_sample, replace=False)
        files = [files[i] for i in sorted(picked)]
    out = []
    for rel in files:
        path = root / rel if fetch is None else fetch(rel)
        out.append(raster_features(read_image(path)) | {"file": rel})
    return features_table(out)


def load_reference(
    reference: str, settings: DriftSettings, *, cache_dir: Path = DEFAULT_CACHE
) -> pd.DataFrame:
    """A features table (``hndsr drift reference`` output) as is; a catalog's features, computed once
    and cached by the catalog's sha256 and the reference settings."""
    local = _local_copy(reference, cache_dir)
    try:
        table = pd.read_parquet(local)
    except Exception as exc:
        raise InputError(f"cannot read the reference {reference} as parquet: {exc}") from exc
    if all(c in table.columns for c in DRIFT_FEATURES):
        return table
    if not {"filename", "split"} <= set(table.columns):
        raise InputError(
            f"{reference} is neither a catalog.parquet (hndsr prepare) nor a features table "
            "(hndsr drift reference)"
        )
    digest = hashlib.sha256(local.read_bytes()).hexdigest()[:16]
    key = f"{digest}-{settings.split}-{settings.images}-{settings.reference_sample}.parquet"
    cached = cache_dir / "reference" / key
    if cached.is_file():
        return pd.read_parquet(cached)
    fetch = None
    root = local.parent
    if reference.startswith("s3://"):
        prefix = reference.rsplit("/", 1)[0]
        root = cache_dir / "objects" / digest
        fetch = _s3_fetcher(prefix, root)
    table = reference_from_catalog(table, root, settings, fetch=fetch)
    cached.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(cached)
    logger.info("reference: %d images from %s (cached in %s)", len(table), reference, cached)
    return table


def _local_copy(uri: str, cache_dir: Path) -> Path:
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.is_file():
            raise InputError(
                f"reference {uri} does not exist: run `hndsr prepare` or give its catalog.parquet"
            )
        return path
    from hndsr.lake import S3Settings, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    target = cache_dir / "objects" / bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    S3Settings.from_env().client().fget_object(bucket, key, str(target))
    return target


def _s3_fetcher(prefix: str, root: Path) -> Any:
    from hndsr.lake import S3Settings, parse_s3_uri

    bucket, key_prefix = parse_s3_uri(prefix)
    client = S3Settings.from_env().client()

    def fetch(rel: str) -> Path:
        target = root / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(bucket, f"{key_prefix}/{rel}".lstrip("/"), str(target))
        return target

    return fetch


# ---------------------------------------------------------------------------------- requests


def load_requests(stats: str, *, window_s: float, now: float | None = None) -> pd.DataFrame:
    """Request records with ``now - window_s <= ts <= now`` from a directory or an S3 prefix of
    ``requests-*.jsonl``. Lines that do not parse (a writer killed mid-line) are skipped."""
    now = time.time() if now is None else now
    start = now - window_s
    records: list[dict[str, Any]] = []
    for blob in _stats_blobs(stats, modified_since=start):
        for line in blob.splitlines():
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and start <= float(rec.get("ts", -1)) <= now:
                records.append(rec)
    columns = ["ts", "scale", "steps", *CONTEXT_FIELDS, *DRIFT_FEATURES]
    frame = pd.DataFrame(records)
    for column in columns:
        if column not in frame.columns:
            frame[column] = np.nan
    return frame.dropna(subset=list(DRIFT_FEATURES)).sort_values("ts").reset_index(drop=True)


def _stats_blobs(stats: str, *, modified_since: float) -> Iterator[bytes]:
    from serving.request_stats import RECORD_PREFIX, RECORD_SUFFIX

    if stats.startswith("s3://"):
        from hndsr.lake import S3Settings, parse_s3_uri

        bucket, prefix = parse_s3_uri(stats)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        client = S3Settings.from_env().client()
        for obj in client.list_objects(bucket, prefix, recursive=True):
            name = obj.object_name.rsplit("/", 1)[-1]
            if not (name.startswith(RECORD_PREFIX) and name.endswith(RECORD_SUFFIX)):
                continue
            if obj.last_modified is not None and obj.last_modified.timestamp() < modified_since:
                continue
            response = client.get_object(bucket, obj.object_name)
            try:
                yield response.read()
            finally:
                response.close()
                response.release_conn()
        return
    root = Path(stats)
    if not root.is_dir():
        raise InputError(
            f"request statistics folder {stats} does not exist (hndsr serve transformer --request-stats)"
        )
    for path in sorted(root.rglob(f"{RECORD_PREFIX}*{RECORD_SUFFIX}")):
        if path.stat().st_mtime >= modified_since:  # rotated files older than the window are skipped
            yield path.read_bytes()


# ---------------------------------------------------------------------------------- verdict


def detect_drift(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> DriftResult:
    """Evidently ``DataDriftPreset`` over :data:`DRIFT_FEATURES` with ``settings``' method per feature,
    plus the K-S p-value of every feature."""
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
    preset = DataDriftPreset(
        columns=columns, drift_share=settings.drift_share, num_method=method, num_threshold=threshold
    )
    pvalues: dict[str, float] = {}
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    drifted: list[str] = []
    with warnings.catch_warnings():  # constant columns (no nodata anywhere) warn; their p-value is 1
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset]).run(current_data=cur, reference_data=ref)
        for column in columns:  # the same tests Evidently ran, for the verdict per feature
            test = get_stattest(ref[column], cur[column], ColumnType.Numerical, method)
            outcome = test(ref[column], cur[column], ColumnType.Numerical, threshold)
            scores[column] = float(outcome.drift_score)
            methods[column] = test.name
            pvalues[column] = _ks_pvalue(ref[column], cur[column])
            if outcome.drifted:
                drifted.append(column)
    share = len(drifted) / len(columns)
    for metric in snapshot.dict()["metrics"]:
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
        snapshot=snapshot,
    )


# ---------------------------------------------------------------------------------- outputs


def report_html(result: DriftResult, settings: DriftSettings, window: str) -> str:
    if result.snapshot is not None:
        return str(result.snapshot.get_html_str(as_iframe=False))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>HNDSR drift: insufficient data</title>"
        "</head><body><h1>HNDSR drift: insufficient data</h1>"
        f"<p>{result.window_size} request records in the last {html.escape(window)}, fewer than the "
        f"{settings.min_samples} needed for a verdict (reference: {result.reference_size} images). "
        "No drift is reported; this is not an alarm.</p></body></html>"
    )


def write_text(target: str, text: str, content_type: str = "text/html") -> None:
    """A local path or ``s3://bucket/key``."""
    data = text.encode("utf-8")
    if target.startswith("s3://"):
        import io

        from hndsr.lake import S3Settings, parse_s3_uri

        bucket, key = parse_s3_uri(target)
        S3Settings.from_env().client().put_object(
            bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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
        pvalue = Gauge(
            "hndsr_drift_feature_pvalue",
            "Kolmogorov-Smirnov p-value per feature (computed whatever the drift method).",
            ["feature"],
            registry=registry,
        )
        for feature, value in result.pvalues.items():
            pvalue.labels(feature=feature).set(value)
        score = Gauge(
            "hndsr_drift_feature_score",
            "Drift method's score per feature (wasserstein_ks: normed Wasserstein distance).",
            ["feature"],
            registry=registry,
        )
        for feature, value in result.scores.items():
            score.labels(feature=feature).set(value)
    return registry


def push(result: DriftResult, gateway: str, *, schedule_s: float, job: str = PUSH_JOB) -> None:
    """Replace the job's metric group on the Pushgateway (stale p-values never linger)."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(gateway, job=job, registry=push_registry(result, schedule_s=schedule_s), timeout=30)
    except OSError as exc:
        raise ConfigError(f"cannot push to the Pushgateway at {gateway}: {exc}; check --pushgateway") from exc


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
        write_text(report, report_html(result, settings, window))
    if pushgateway:
        push(result, pushgateway, schedule_s=schedule_s)
    logger.info("drift: %s", result.summary())
    return result
