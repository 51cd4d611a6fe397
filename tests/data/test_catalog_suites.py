"""The "data" test family: the Great Expectations suites of data_validation/ over a generated catalog.

The same suites `hndsr validate-data` runs: every one passes on a clean prepared set, and each kind of
damage (broken inputs, duplicates, blank images, leakage, a stale split, schema drift) fails with a
message naming the expectation and the offending rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from imagesets import data_params, write_broken_set, write_clean_set
from typer.testing import CliRunner

from data_validation.frames import build_frames, load_tables
from data_validation.runner import ValidationReport, thresholds_from_params, validate_catalog
from data_validation.suites import SUITES
from hndsr.prepare import PrepareConfig, prepare
from hndsr_cli import app

PARAMS = data_params()
THRESHOLDS = thresholds_from_params(PARAMS)


@pytest.fixture(scope="module")
def clean_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    write_clean_set(root / "raw", n=16)
    prepare(root / "raw", root / "processed", PrepareConfig.from_params(PARAMS))
    return root / "processed" / "catalog.parquet"


@pytest.fixture(scope="module")
def clean_report(clean_catalog: Path) -> ValidationReport:
    return validate_catalog(clean_catalog, THRESHOLDS)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    write_broken_set(root / "raw")
    prepare(root / "raw", root / "processed", PrepareConfig.from_params(PARAMS))
    return root


def _tampered(catalog: Path, tmp: Path, edit: object) -> Path:
    """A copy of the prepared folder whose catalog was changed by ``edit(df)``."""
    out = tmp / "tampered"
    shutil.copytree(catalog.parent, out)
    df = pd.read_parquet(out / "catalog.parquet")
    df = edit(df)  # type: ignore[operator]
    df.to_parquet(out / "catalog.parquet")
    return out / "catalog.parquet"


def _failed(report: ValidationReport) -> dict[str, str]:
    return {f.description: f.line() for f in report.failures}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_suite_passes_on_a_clean_catalog(clean_report: ValidationReport, suite: str) -> None:
    results = [r for r in clean_report.results if r["suite"] == suite]
    assert results, f"suite {suite} ran no expectations"
    failed = [r["description"] for r in results if not r["success"]]
    assert not failed, [f.line() for f in clean_report.failures]


def test_clean_report_counts(clean_report: ValidationReport) -> None:
    assert clean_report.success
    c = clean_report.counts
    assert c["sources"] == 16 and c["tiles"] == 64 and c["rejected"] == 0
    assert sum(s["sources"] for s in c["splits"].values()) == 16


def test_broken_inputs_fail_validation_naming_each_problem(broken: Path) -> None:
    report_path = broken / "validation.json"
    docs = broken / "docs"
    result = CliRunner().invoke(
        app,
        [
            "validate-data",
            "--catalog",
            str(broken / "processed" / "catalog.parquet"),
            "--report",
            str(report_path),
            "--docs",
            str(docs),
            "--set",
            "prepare.tile_size=48",
            "--set",
            "data.val_fraction=0.2",
            "--set",
            "data.test_fraction=0.2",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    out = result.output
    # Rejected files, by reason and by name: truncated, empty, duplicate, all nodata ...
    assert "reject rate" in out and "truncated.png" in out and "duplicate" in out
    # The blank (flat grey) image got through prepare; its tiles fail the blank/sharpness checks.
    assert "no blank tiles" in out and "blank_y" in out
    assert "variance of the Laplacian" in out
    assert "tiles are unique by content" in out  # a blank image's tiles are identical bytes
    report = json.loads(report_path.read_text())
    assert report["success"] is False and report["failed_expectations"] == len(report["failures"])
    ingest = next(f for f in report["failures"] if f["suite"] == "ingest")
    assert ingest["observed"]["by_reason"]["corrupt"] == 2
    assert {e["reason"] for e in ingest["examples"]} >= {"corrupt", "duplicate", "empty", "all_nodata"}
    assert (docs / "index.html").is_file() and list((docs / "validations").rglob("*.html"))


def test_a_source_in_two_splits_and_a_stale_split_fail(clean_catalog: Path, tmp_path: Path) -> None:
    def leak(df: pd.DataFrame) -> pd.DataFrame:
        first = df["source"].iloc[0]
        rows = df.index[df["source"] == first]
        other = "test" if df.loc[rows[0], "split"] != "test" else "train"
        df.loc[rows[0], "split"] = other
        return df

    failed = _failed(validate_catalog(_tampered(clean_catalog, tmp_path, leak), THRESHOLDS))
    assert any("two splits" in d for d in failed)
    assert any("hash split" in d for d in failed)


def test_duplicate_sources_fail(clean_catalog: Path, tmp_path: Path) -> None:
    def duplicate(df: pd.DataFrame) -> pd.DataFrame:
        copy = df[df["source"] == df["source"].iloc[0]].copy()
        copy["source"] = "elsewhere/copy.png"
        copy["filename"] = copy["filename"].str.replace("/hr/", "/hr/copy-", regex=False)
        return pd.concat([df, copy], ignore_index=True)

    report = validate_catalog(_tampered(clean_catalog, tmp_path, duplicate), THRESHOLDS)
    failed = _failed(report)
    assert any("duplicate source images" in d for d in failed)
    line = next(v for d, v in failed.items() if "unique by content" in d)
    assert "copy-" in line  # the offending rows are named


def test_schema_drift_and_out_of_range_values_fail(clean_catalog: Path, tmp_path: Path) -> None:
    def drift(df: pd.DataFrame) -> pd.DataFrame:
        df = df.drop(columns=["sharpness", "lr_x3"])
        df.loc[0, "nodata_fraction"] = 0.9
        df.loc[1, "height"] = 20
        df["bands"] = df["bands"].astype("float64")
        return df

    report = validate_catalog(_tampered(clean_catalog, tmp_path, drift), THRESHOLDS)
    failed = _failed(report)
    columns = next(v for d, v in failed.items() if "every catalog column" in d)
    assert "sharpness" in columns and "lr_x3" in columns
    assert any("nodata fraction" in d for d in failed)
    assert any("px high" in d for d in failed)
    assert any("column bands holds int" in d for d in failed)


def test_split_ratios_are_held_to_params_within_tolerance(clean_catalog: Path) -> None:
    catalog, rejects = load_tables(clean_catalog)
    frames = build_frames(catalog, rejects, THRESHOLDS)
    splits = frames.splits.set_index("split")
    assert (splits["abs_deviation"] <= splits["tolerance"]).all()
    skewed = thresholds_from_params(data_params(**{"data.test_fraction": 0.6, "data.val_fraction": 0.3}))
    report = validate_catalog(clean_catalog, skewed)
    assert any("share of source images" in f.description for f in report.failures)
    assert any("hash split" in f.description for f in report.failures)


def test_missing_catalog_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate-data", "--catalog", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2 and "run `hndsr prepare` first" in result.output
