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
from hndsr.image_read import read_image
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
    sources = rows["source"] if "source" in rows else rows["filename"]
    if columns:
        pairs = [
            (f, str(src)) for c in columns for f, src in zip(rows[c], sources, strict=True) if f == f and f
        ]
    else:
        pairs = [(str(f), str(src)) for f, src in zip(rows["filename"], sources, strict=True)]
    if len(pairs) > settings.reference_sample:
        picked = np.random.default_rng(0).choice(len(pairs), settings.reference_sample, replace=False)
        pairs = [pairs[i] for i in sorted(picked)]
    out = []
    for rel, source in pairs:
        path = root / rel if fetch is None else fetch(rel)
        out.append(raster_features(read_image(path)) | {"file": rel, "source": source})
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
    lacking = [c for c in DRIFT_FEATURES if c not in table.columns]
    if not lacking:
        return table
    if "file" in table.columns and len(lacking) < len(DRIFT_FEATURES):  # hndsr drift reference's output
        raise InputError(
            f"the features table {reference} lacks {', '.join(lacking)} (written by an older hndsr): "
            "rebuild it with `hndsr drift reference`, or pass the catalog.parquet"
        )
    if not {"filename", "split"} <= set(table.columns):
        raise InputError(
            f"{reference} is neither a catalog.parquet (hndsr prepare) nor a features table "
            "(hndsr drift reference)"
        )
    digest = hashlib.sha256(local.read_bytes()).hexdigest()[:16]
    features = hashlib.sha256(",".join(DRIFT_FEATURES).encode()).hexdigest()[:8]  # new features: recompute
    key = f"{digest}-{settings.split}-{settings.images}-{settings.reference_sample}-{features}.parquet"
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
    from lake.storage import S3Settings, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    target = cache_dir / "objects" / bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    S3Settings.from_env().client().fget_object(bucket, key, str(target))
    return target


def _s3_fetcher(prefix: str, root: Path) -> Any:
    from lake.storage import S3Settings, parse_s3_uri

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
        from lake.storage import S3Settings, parse_s3_uri

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


def normed_wasserstein(reference: Any, current: Any) -> float:
    """Evidently's "wasserstein" score: the distance divided by the reference's std (at least 0.001)."""
    from scipy import stats

    norm = max(float(np.std(reference)), 0.001)
    return float(stats.wasserstein_distance(reference, current)) / norm


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

    Tiles of one source image are not independent samples: a reference of 228 tiles from 19 sources
    of one site holds 19 scenes, and a window of held-out tiles from 3 other scenes of the same site
    differs from it by scene variation alone (a false alarm at the fixed 0.25). The null distances
    are measured on the reference itself, by source: ``calibration_repeats`` times, hold out a random
    20% of its sources and score all their rows against the remaining sources. With many sources the
    held-out part matches the rest and the threshold stays at ``base`` (small-window noise is the K-S
    condition's job); with few it rises to what scene variation reaches. ``window_size`` is part of
    the cache key only. Without a ``source`` column every row counts as its own source. Fewer than 5
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
            pvalues[column] = _ks_pvalue(ref[column], cur[column])
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


def report_context(
    result: DriftResult, settings: DriftSettings, window: str, *, reference: str = "", model: str = ""
) -> str:
    """The block a person reads first: verdict, window, reference, model, and per feature the statistic
    that decided (normed Wasserstein vs its threshold, K-S p-value vs its significance)."""
    share = "n/a" if result.drift_share is None else f"{result.drift_share:.2f}"
    verdict = {"drift": "DRIFT", "ok": "no drift", "insufficient_data": "insufficient data"}[result.state]
    lines = [
        f"<p class='verdict'><b>{verdict}</b>: drift share {share} (drift at &ge; {settings.drift_share:g})"
        + (f"; drifted: {html.escape(', '.join(result.drifted))}" if result.drifted else "")
        + "</p>",
        "<ul>",
        f"<li>window: the last {html.escape(window)}, {result.window_size} request images "
        f"(at least {settings.min_samples} for a verdict), up to "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(result.timestamp))}</li>",
        f"<li>reference: {html.escape(reference or 'given table')}, {result.reference_size} "
        f"{settings.images.upper()} tiles of the {html.escape(settings.split)} split from "
        f"{result.reference_sources} source images</li>",
        f"<li>model: {html.escape(model or 'not given (--model)')}</li>",
        f"<li>method: {html.escape(settings.stattest)}"
        + (
            f" (drifted = normed Wasserstein &ge; its threshold <b>and</b> K-S p &lt; {settings.threshold:g};"
            " thresholds calibrated on the reference's own sources)"
            if settings.stattest == WASSERSTEIN_KS
            else ""
        )
        + "</li></ul>",
    ]
    if result.pvalues:
        rows = []
        for feature in DRIFT_FEATURES:
            if feature not in result.pvalues:
                continue
            score, p = result.scores.get(feature, float("nan")), result.pvalues[feature]
            limit = result.thresholds.get(feature)
            drifted = feature in result.drifted
            if settings.stattest == WASSERSTEIN_KS and limit is not None:
                far, real = score >= limit, p < settings.threshold
                why = (
                    "distance and p-value both past their limits"
                    if drifted
                    else "distance under its threshold"
                    if not far
                    else "K-S p-value not significant"
                    if not real
                    else "-"
                )
            else:
                why = "the method's score" if drifted else "-"
            rows.append(
                f"<tr><td>{feature}</td><td>{'<b>drifted</b>' if drifted else 'no'}</td>"
                f"<td>{score:.3f}</td><td>{'' if limit is None else f'{limit:.3f}'}</td>"
                f"<td>{p:.3g}</td><td>{html.escape(why)}</td></tr>"
            )
        lines.append(
            "<table border='1' cellpadding='3' style='border-collapse:collapse'><tr><th>feature</th>"
            "<th>drifted</th><th>score (normed Wasserstein)</th><th>threshold</th><th>K-S p-value</th>"
            f"<th>what decided</th></tr>{''.join(rows)}</table>"
        )
    return (
        "<section id='hndsr-drift-context' style='font-family:sans-serif;margin:1em'>"
        + "".join(lines)
        + "</section>"
    )


def report_html(
    result: DriftResult, settings: DriftSettings, window: str, *, reference: str = "", model: str = ""
) -> str:
    context = report_context(result, settings, window, reference=reference, model=model)
    if result.snapshot is not None:
        page = str(result.snapshot.get_html_str(as_iframe=False))
        match = re.search(r"<body[^>]*>", page)
        if match:
            return page[: match.end()] + context + page[match.end() :]
        return context + page
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>HNDSR drift: insufficient data</title>"
        "</head><body><h1>HNDSR drift: insufficient data</h1>"
        f"<p>{result.window_size} request records in the last {html.escape(window)}, fewer than the "
        f"{settings.min_samples} needed for a verdict (reference: {result.reference_size} images). "
        f"No drift is reported; this is not an alarm.</p>{context}</body></html>"
    )


def write_text(target: str, text: str, content_type: str = "text/html") -> None:
    """A local path or ``s3://bucket/key``."""
    data = text.encode("utf-8")
    if target.startswith("s3://"):
        import io

        from lake.storage import S3Settings, parse_s3_uri

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
