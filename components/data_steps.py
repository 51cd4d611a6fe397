"""The data steps: raw images to a prepared, catalogued data set, and its validation."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components import tracking
from components.artifact_files import VALIDATION_FILE, named_file
from components.step_params import load
from hndsr.errors import HNDSRError
from hndsr.files import sha256_file


class StepFailed(HNDSRError):
    """A step ran and its result is unacceptable (e.g. data validation failed)."""


def prepare_data(
    data_uri: str,
    out_dir: str,
    *,
    params: str,
    profile: str,
    tracking_uri: str,
    data_version: str = "",
    code_version: str = "",
) -> dict[str, Any]:
    """Raw HR images (folder or s3://bucket/prefix) -> tiles, LR pairs and catalog.parquet in ``out_dir``."""
    from hndsr.prepare import PrepareConfig, prepare
    from lake.storage import S3Settings, download_prefix, is_s3_uri

    p = load(params, profile)
    source, prefix = data_uri, ""
    with tracking.step_run(
        tracking_uri, "prepare", params={"data_uri": data_uri, "prepare": p.prepare.__dict__}
    ):
        mlflow.set_tags({"hndsr.data_version": data_version, "hndsr.code_version": code_version})
        if is_s3_uri(data_uri):
            local = Path(tempfile.mkdtemp(prefix="hndsr-raw-"))
            download_prefix(S3Settings.from_env(), data_uri, local)
            source, prefix = str(local), data_uri.rstrip("/") + "/"
        result = prepare(source, out_dir, PrepareConfig.from_params(p), source_prefix=prefix)
        s = result.summary
        mlflow.log_metrics(
            {f"{split}_tiles": float(v["tiles"]) for split, v in s["splits"].items()}
            | {"inputs": float(s["inputs"]), "rejected": float(s["rejected"])}
        )
        mlflow.log_dict(s, "prepare_summary.json")
    return {
        "tiles": {split: v["tiles"] for split, v in s["splits"].items()},
        "rejected": s["rejected"],
        "catalog_sha256": sha256_file(Path(out_dir) / "catalog.parquet"),
        "data_version": data_version,
        "code_version": code_version,
    }


# ------------------------------------------------------------------------------------------ validate


def validate_data(
    dataset_dir: str,
    report_path: str,
    *,
    params: str,
    profile: str,
    tracking_uri: str,
    docs_dir: str | None = None,
) -> dict[str, Any]:
    """Great Expectations suites over the catalog; raises :class:`StepFailed` naming each failure.
    ``docs_dir``: where GX's data docs site goes (``index.html`` and a page per suite, readable
    offline: data_validation.docs), also logged to MLflow under ``data_docs/``."""
    from data_validation.runner import thresholds_from_params, validate_catalog

    p = load(params, profile)
    with tracking.step_run(tracking_uri, "validate", params={"validate": p.validate.__dict__}):
        report = validate_catalog(
            Path(dataset_dir) / "catalog.parquet",
            thresholds_from_params(p),
            report_path=report_path,
            docs_dir=docs_dir,
        )
        if docs_dir is not None:
            mlflow.log_artifacts(docs_dir, "data_docs")
        mlflow.log_metrics({"evaluated": float(report.evaluated), "failed": float(len(report.failures))})
        named = named_file(report_path, VALIDATION_FILE)
        shutil.copyfile(report_path, named)
        mlflow.log_artifact(str(named))
        verdict = (
            f"PASSED: {report.evaluated} of {report.evaluated} expectations met"
            if report.success
            else f"FAILED: {len(report.failures)} of {report.evaluated} expectations not met"
        )
        mlflow.set_tag("hndsr.data_quality", verdict)
        quality = [f"# Data quality: {verdict}", "", f"Catalog: {Path(dataset_dir) / 'catalog.parquet'}", ""]
        quality += [f"- FAILED {f.line()}" for f in report.failures] or ["Every expectation was met."]
        mlflow.log_text("\n".join(quality) + "\n", "data_quality.md")
    if not report.success:
        lines = "\n".join(f"FAILED {f.line()}" for f in report.failures)
        raise StepFailed(
            f"data validation failed ({len(report.failures)} of {report.evaluated} expectations):\n{lines}"
        )
    return {"evaluated": report.evaluated, "tiles": report.counts["tiles"]}
