"""The drift job as a KFP pipeline: compiles, and runs offline (kfp.local) to an HTML artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from deploy.image_tags import image_ref
from pipelines.drift_pipeline import compile_drift_pipeline, run_drift_local


def test_compiles_with_caching_off(tmp_path: Path) -> None:
    spec = yaml.safe_load(compile_drift_pipeline(tmp_path / "drift.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "hndsr-drift"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"reference", "stats", "window", "pushgateway", "schedule"} <= set(params)
    task = spec["root"]["dag"]["tasks"]["drift-check"]
    assert task["cachingOptions"] == {}  # enableCaching false is the proto default: omitted
    executor = spec["deploymentSpec"]["executors"]["exec-drift-check"]["container"]
    assert executor["image"] == image_ref("train")  # tied to the package version


def test_local_run_writes_the_html_report(
    drift_catalog: Path,
    write_requests: Callable[..., Path],
    tmp_path: Path,
) -> None:
    stats = write_requests(60, "blur", 1.5)
    state = run_drift_local(
        {"reference": str(drift_catalog), "stats": str(stats), "window": "1h"},
        pipeline_root=tmp_path / "root",
    )
    assert state == "drift"
    reports = list((tmp_path / "root").rglob("report*"))
    assert reports and "<html" in reports[0].read_text()[:2000].lower()
