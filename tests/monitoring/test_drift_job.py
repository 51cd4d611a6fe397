"""The drift job: Evidently verdicts on shifted and unshifted request statistics, the insufficient-data
state, the window, the reference from catalog.parquet, the HTML report and the CLI."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from drift_helpers import drift_last_hour
from driftdata import record, request_rasters
from typer.testing import CliRunner

from hndsr.errors import InputError
from hndsr_cli import app
from monitoring.drift.job import run_drift
from monitoring.drift.pushgateway import push_registry
from monitoring.drift.reference import load_reference
from monitoring.drift.settings import DriftSettings, parse_window
from monitoring.features import DRIFT_FEATURES


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_unshifted_requests_are_not_drift(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    cache: Path,
    tmp_path: Path,
) -> None:
    stats = write_requests(60)
    result = drift_last_hour(drift_catalog, stats, cache, report=str(tmp_path / "r.html"))
    assert result.state == "ok" and not result.detected
    assert result.window_size == 60 and result.drift_share is not None
    assert result.drift_share < DriftSettings().drift_share
    assert set(result.pvalues) == set(DRIFT_FEATURES)
    assert "<html" in (tmp_path / "r.html").read_text()[:2000].lower()


@pytest.mark.parametrize(("shift", "strength"), [("darken", 0.35), ("blur", 1.5), ("haze", 0.35)])
def test_shifted_requests_are_drift(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    cache: Path,
    shift: str,
    strength: float,
) -> None:
    stats = write_requests(60, shift, strength)
    result = drift_last_hour(drift_catalog, stats, cache)
    assert result.state == "drift" and result.detected and result.drift_share is not None
    assert result.drift_share >= DriftSettings().drift_share
    blur = ["sharpness", "edge_crispness", "detail_to_contrast"]
    expected = {"darken": ["mean_g"], "blur": blur, "haze": ["colourfulness"]}[shift]
    assert all(f in result.drifted and result.pvalues[f] < 0.05 for f in expected), result.drifted


def test_every_entry_point_defaults_to_the_jobs_drift_share() -> None:
    """The CLI, the Kubeflow pipeline and the dashboard line (tests/monitoring/test_dashboard.py)
    say drift where the job does."""
    import typer

    from pipelines.drift_pipeline import drift_pipeline

    default = DriftSettings().drift_share
    drift_run = typer.main.get_command(app).commands["drift"].commands["run"]  # type: ignore[attr-defined]
    (option,) = [p for p in drift_run.params if p.name == "drift_share"]
    assert option.default == default
    assert drift_pipeline.component_spec.inputs["drift_share"].default == default


def test_a_features_table_without_a_newer_feature_says_to_rebuild_it(
    drift_catalog: Path,
    cache: Path,
    tmp_path: Path,
) -> None:
    table = load_reference(str(drift_catalog), DriftSettings(), cache_dir=cache)
    old = tmp_path / "old.parquet"
    table.drop(columns=["edge_crispness"]).to_parquet(old)
    with pytest.raises(InputError, match=r"lacks edge_crispness.*hndsr drift reference"):
        load_reference(str(old), DriftSettings(), cache_dir=cache)


def test_too_few_samples_is_a_state_not_an_alarm(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    cache: Path,
    tmp_path: Path,
) -> None:
    stats = write_requests(10, "darken", 0.35)  # strongly shifted, but only 10 requests
    result = drift_last_hour(drift_catalog, stats, cache, report=str(tmp_path / "r.html"))
    assert result.state == "insufficient_data" and not result.detected and result.drift_share is None
    assert "insufficient data" in (tmp_path / "r.html").read_text()
    text = push_registry(result, schedule_s=3600).collect()
    values = {s.name: s.value for m in text for s in m.samples}
    assert values["hndsr_drift_insufficient_data"] == 1 and values["hndsr_drift_detected"] == 0
    assert values["hndsr_drift_window_size"] == 10 and "hndsr_drift_share" not in values


def test_window_selects_recent_records(
    drift_catalog: Path,
    tmp_path: Path,
    cache: Path,
) -> None:
    stats = tmp_path / "stats"
    record(stats, request_rasters(60, "darken", 0.35))
    old = time.time() - 3 * 3600
    for f in stats.glob("*.jsonl"):  # shifted traffic of 3 h ago, outside a 1 h window
        lines = [orjson.loads(line) | {"ts": old} for line in f.read_bytes().splitlines()]
        f.write_bytes(b"".join(orjson.dumps(rec) + b"\n" for rec in lines))
        os.utime(f, (old, old))
    record(stats, request_rasters(60))
    result = drift_last_hour(drift_catalog, stats, cache)
    assert result.window_size == 60 and not result.detected
    wide = run_drift(reference=str(drift_catalog), stats=str(stats), window="1d", cache_dir=cache)
    assert wide.window_size == 120


def test_reference_from_catalog_uses_lr_tiles_of_the_split(drift_catalog: Path, cache: Path) -> None:
    catalog = pd.read_parquet(drift_catalog)
    ref = load_reference(str(drift_catalog), DriftSettings(), cache_dir=cache)
    assert len(ref) == 3 * (catalog["split"] == "train").sum()  # x2, x3, x4 tiles of train
    assert all(f.startswith("train/lr_x") for f in ref["file"])
    assert list(cache.rglob("*.parquet"))  # cached: the next run reads no image
    hr = load_reference(str(drift_catalog), DriftSettings(images="hr", split="all"), cache_dir=cache)
    assert len(hr) == len(catalog)


def test_bad_arguments_say_what_to_do(tmp_path: Path, drift_catalog: Path) -> None:
    assert parse_window("24h") == 86400 and parse_window("30m") == 1800 and parse_window("7d") == 604800
    with pytest.raises(InputError, match="positive duration"):
        parse_window("yesterday")
    runner = CliRunner()
    res = runner.invoke(
        app, ["drift", "run", "--reference", str(tmp_path / "nope.parquet"), "--stats", str(tmp_path)]
    )
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(
        app, ["drift", "run", "--reference", str(drift_catalog), "--stats", str(tmp_path), "--window", "soon"]
    )
    assert res.exit_code == 2 and "30m, 24h or 7d" in res.output
    res = runner.invoke(
        app, ["drift", "run", "--reference", str(drift_catalog), "--stats", str(tmp_path / "missing")]
    )
    assert res.exit_code == 2 and "--request-stats" in res.output


def test_cli_run_and_reference(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    features = tmp_path / "ref.parquet"
    res = runner.invoke(app, ["drift", "reference", str(drift_catalog), "--out", str(features)])
    assert res.exit_code == 0, res.output
    stats = write_requests(60, "haze", 0.35)
    out = tmp_path / "summary.json"
    args = ["drift", "run", "--reference", str(features), "--stats", str(stats), "--window", "2h"]
    res = runner.invoke(app, [*args, "--report", str(tmp_path / "r.html"), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("drift: 60 requests")
    assert json.loads(out.read_text())["detected"] is True
    assert runner.invoke(app, [*args, "--fail-on-drift"]).exit_code == 1


def _normal_features(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:

    rng = np.random.default_rng(seed)
    return pd.DataFrame({f: rng.normal(shift, 1.0, n) for f in DRIFT_FEATURES})


def test_large_samples_with_irrelevant_differences_are_not_drift() -> None:
    """Thousands of rows: K-S flags a 0.15-std offset of every feature, wasserstein_ks does not; a
    0.5-std offset is drift for both. The K-S p-values and the method's scores are reported either way."""
    from monitoring.drift.detection import detect_drift

    reference, tiny = _normal_features(5000, 0), _normal_features(3000, 1, shift=0.15)
    ks = detect_drift(reference, tiny, DriftSettings(stattest="ks"))
    assert ks.detected and ks.drift_share is not None and ks.drift_share >= 0.8
    result = detect_drift(reference, tiny, DriftSettings())
    assert not result.detected and result.drift_share == 0.0 and not result.drifted
    assert all(p < 0.05 for p in result.pvalues.values())  # significant, but irrelevant
    assert all(0.05 < s < 0.25 for s in result.scores.values())  # normed Wasserstein ~ 0.15
    assert set(result.methods.values()) == {"wasserstein_ks_p0.05"}
    big = detect_drift(reference, _normal_features(3000, 2, shift=0.5), DriftSettings())
    assert big.detected and big.drift_share == 1.0
    strict = detect_drift(reference, tiny, DriftSettings(stattest="wasserstein", stattest_threshold=0.05))
    assert strict.detected and set(strict.methods.values()) == {"wasserstein"}
    samples = [s for m in push_registry(result, schedule_s=60).collect() for s in m.samples]
    scores = {s.labels["feature"]: s.value for s in samples if s.name == "hndsr_drift_feature_score"}
    assert scores == result.scores and {s.name for s in samples} >= {"hndsr_drift_feature_pvalue"}


def test_small_windows_need_significance() -> None:
    """50 requests drawn from the reference's own distribution: normed distances are noisy, the K-S
    condition keeps them from reading as drift."""
    from monitoring.drift.detection import detect_drift

    reference = _normal_features(5000, 0)
    for seed in range(3):
        result = detect_drift(reference, _normal_features(50, 10 + seed), DriftSettings())
        assert not result.detected, result.summary()


def test_stattest_settings_are_checked(
    drift_catalog: Path,
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError, match="explicit --stattest"):
        DriftSettings(stattest="auto", stattest_threshold=0.1).check()
    with pytest.raises(InputError, match="not an Evidently test"):
        DriftSettings(stattest="nonsense").check()
    DriftSettings(stattest="psi").check()
    res = CliRunner().invoke(
        app,
        [
            "drift",
            "run",
            "--reference",
            str(drift_catalog),
            "--stats",
            str(tmp_path),
            "--stattest",
            "nonsense",
        ],
    )
    assert res.exit_code == 2 and "wasserstein_ks" in res.output


def _scene_features(sources: int, per_source: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Tiles of ``sources`` scenes: each scene moves every feature by its own offset (scene-to-scene
    variation, std 1) and its tiles vary around it (std 0.3): tiles of one scene are not independent."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(sources):
        offset = rng.normal(0.0, 1.0, len(DRIFT_FEATURES))
        rows = {f: shift + offset[i] + rng.normal(0.0, 0.3, per_source) for i, f in enumerate(DRIFT_FEATURES)}
        frames.append(pd.DataFrame(rows | {"source": f"s{seed}-{s}"}))
    return pd.concat(frames, ignore_index=True)


def test_a_reference_of_few_scenes_does_not_flag_new_scenes_of_the_same_kind() -> None:
    """The false alarm of issue 19: 228 reference tiles of 19 scenes, held-out tiles of 3 other scenes.
    The fixed 0.25 distance reads scene variation as drift; the thresholds calibrated on the
    reference's own sources do not, and a real shift (2 scene-stds) is still drift."""
    from monitoring.drift.detection import detect_drift

    reference = _scene_features(19, 12, seed=0)
    fixed_alarms = calibrated_alarms = 0
    for seed in range(1, 11):
        window = _scene_features(3, 20, seed=seed)
        fixed_alarms += detect_drift(
            reference, window, DriftSettings(calibrate=False), evidently=False
        ).detected
        result = detect_drift(reference, window, DriftSettings(), evidently=False)
        calibrated_alarms += result.detected
        assert result.reference_sources == 19 and all(t >= 0.25 for t in result.thresholds.values())
    assert fixed_alarms >= 5 and calibrated_alarms <= 1, (fixed_alarms, calibrated_alarms)
    shifted = detect_drift(reference, _scene_features(3, 20, seed=99, shift=2.5), DriftSettings())
    assert shifted.detected and shifted.snapshot is not None


def test_the_report_states_window_reference_model_and_the_deciding_statistic(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    cache: Path,
    tmp_path: Path,
) -> None:
    stats = write_requests(60, "haze", 0.35)
    report = tmp_path / "r.html"
    model = "models:/hndsr@champion (version 3)"
    result = drift_last_hour(drift_catalog, stats, cache, report=str(report), model=model)
    page = report.read_text()
    start = page.index("id='hndsr-drift-context'")
    context = page[start : page.index("</section>", start)]
    assert page.index("<body") < start < len(page) // 2  # read first, before Evidently's report
    assert "<b>DRIFT</b>" in context and "the last 1h, 60 request images" in context
    assert str(drift_catalog) in context and f"{result.reference_size} LR tiles of the train split" in context
    assert "models:/hndsr@champion (version 3)" in context
    for feature in DRIFT_FEATURES:
        assert f"<tr><td>{feature}</td>" in context
    # per feature: the score, its threshold, the K-S p-value and what decided
    row = context[context.index(f"<tr><td>{result.drifted[0]}</td>") :].split("</tr>")[0]
    assert "<b>drifted</b>" in row and "both past their limits" in row
    assert (
        f"{result.thresholds[result.drifted[0]]:.3f}" in row
        and f"{result.pvalues[result.drifted[0]]:.3g}" in row
    )
    assert "distance under its threshold" in context or "K-S p-value not significant" in context
