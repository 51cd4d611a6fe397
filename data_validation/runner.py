"""Run the suites with Great Expectations 1.x (ephemeral context, pandas data source) and report.

The JSON report is deterministic (no run times or ids): the same catalog gives the same bytes, so DVC
sees no change when nothing changed. The HTML data docs are GX's own; their pages carry the results
in the HTML itself and load only styling from CDNs, so they stay readable offline.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_validation.docs import make_offline
from data_validation.frames import Frames, Thresholds, build_frames, load_tables
from data_validation.suites import SUITES, SuiteSpec, gx_expectations
from hndsr.config import Params

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5


def thresholds_from_params(params: Params) -> Thresholds:
    v = params.validate
    return Thresholds(
        tile_size=params.prepare.tile_size,
        scales=tuple(params.prepare.scales),
        val_fraction=params.data.val_fraction,
        test_fraction=params.data.test_fraction,
        split_tolerance=v.split_tolerance,
        max_nodata_fraction=v.max_nodata_fraction,
        max_reject_rate=v.max_reject_rate,
        min_band_std=v.min_band_std,
        min_sharpness=v.min_sharpness,
    )


@dataclass
class Failure:
    suite: str
    expectation: str
    description: str
    kwargs: dict[str, Any]
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    summary: str | None = None  # replaces the generic count/observed part of the message

    def line(self) -> str:
        head = f"[{self.suite}] {self.description} ({self.expectation})"
        if self.error:
            return f"{head}: could not be evaluated: {self.error}"
        parts = []
        if self.summary:
            parts.append(self.summary)
        elif self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} of {self.element_count} rows fail")
        elif self.observed is not None:
            parts.append(f"observed {_short(self.observed, 160)}")
        if self.examples:
            shown = "; ".join(
                " ".join(f"{k}={_short(v, 72)}" for k, v in ex.items()) for ex in self.examples[:3]
            )
            parts.append(f"e.g. {shown}")
        return f"{head}: {', '.join(parts) or 'failed'}"


@dataclass
class ValidationReport:
    success: bool
    catalog: str
    thresholds: dict[str, Any]
    counts: dict[str, Any]
    evaluated: int
    failures: list[Failure]
    results: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "catalog": self.catalog,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "counts": self.counts,
            "thresholds": self.thresholds,
            "failures": [asdict(f) | {"message": f.line()} for f in self.failures],
            "results": self.results,
        }

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return str(value)


def _short(value: Any, width: int) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256: the prefix identifies it in a message
    if isinstance(value, np.ndarray):
        value = [round(float(v), 4) for v in value]
    elif isinstance(value, np.generic):
        value = value.item()
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _clean(value: Any) -> Any:
    """Plain JSON-ready values (numpy scalars and arrays unwrapped)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _gx_context(docs_dir: Path | None) -> Any:
    gx_expectations()  # quiet, no usage statistics
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # No default data docs site: GX would make a temporary folder for it on every run.
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="hndsr",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def _run_suite(context: Any, spec: SuiteSpec, frame: pd.DataFrame, t: Thresholds) -> Any:
    import great_expectations as gx

    source = context.data_sources.add_or_update_pandas("hndsr")
    asset = source.add_dataframe_asset(spec.name)
    batch_definition = asset.add_batch_definition_whole_dataframe(spec.name)
    suite = context.suites.add(gx.ExpectationSuite(name=spec.name))
    for expectation in spec.build(t):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=spec.name, data=batch_definition, suite=suite)
    )
    index_columns = [c for c in spec.index_columns if c in frame.columns]
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    if index_columns:
        result_format["unexpected_index_column_names"] = index_columns
    return definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)


def _failure(spec: SuiteSpec, r: Any, frames: Frames) -> Failure:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    res = r.result or {}
    failure = Failure(
        suite=spec.name,
        expectation=cfg.type,
        description=cfg.description or cfg.type,
        kwargs=_clean(kwargs),
    )
    info = r.exception_info or {}
    if info.get("raised_exception"):
        failure.error = str(info.get("exception_message") or "unknown error").splitlines()[0]
        return failure
    if "unexpected_count" in res:
        failure.unexpected_count = int(res["unexpected_count"])
        failure.element_count = int(res.get("element_count") or 0)
    if "observed_value" in res:
        failure.observed = _clean(res["observed_value"])
        if res.get("details"):
            failure.observed = {"value": failure.observed, "details": _clean(res["details"])}
    examples = [_clean(e) for e in (res.get("partial_unexpected_index_list") or [])]
    column = kwargs.get("column")
    if cfg.type == "expect_column_values_to_be_unique" and column:
        examples.sort(key=lambda e: str(e.get(column)))  # the rows sharing a value side by side
    failure.examples = examples[:MAX_EXAMPLES]
    mismatched = (res.get("details") or {}).get("mismatched") or {}
    if mismatched.get("missing"):
        failure.summary = f"missing columns: {', '.join(map(str, mismatched['missing']))}"
    if spec.name == "ingest":
        # The rate alone does not say what went wrong: name the rejected files, grouped by reason.
        ingest = frames.ingest.iloc[0]
        rejects = frames.rejects.sort_values(["reason", "source"])
        failure.unexpected_count = failure.element_count = None
        failure.observed = {
            "reject_rate": float(ingest["reject_rate"]),
            "rejected": int(ingest["rejected"]),
            "inputs": int(ingest["inputs"]),
            "by_reason": {str(k): int(v) for k, v in rejects["reason"].value_counts().sort_index().items()},
        }
        reasons = ", ".join(f"{k} {v}" for k, v in failure.observed["by_reason"].items())
        failure.summary = (
            f"reject rate {failure.observed['reject_rate']:.3g}: {failure.observed['rejected']} of "
            f"{failure.observed['inputs']} input files rejected ({reasons})"
        )
        failure.examples = [
            {"source": row.source, "reason": row.reason, "detail": row.detail}
            for row in rejects.groupby("reason").head(2).itertuples()
        ][: MAX_EXAMPLES * 2]
    return failure


def validate_catalog(
    catalog_path: str | Path,
    thresholds: Thresholds,
    *,
    report_path: str | Path | None = None,
    docs_dir: str | Path | None = None,
) -> ValidationReport:
    """Run every suite over the catalog (and rejects) beside ``catalog_path``; write the report(s)."""
    catalog, rejects = load_tables(catalog_path)
    frames = build_frames(catalog, rejects, thresholds)
    docs = Path(docs_dir).resolve() if docs_dir is not None else None  # GX wants an absolute path
    if docs is not None and docs.exists():
        shutil.rmtree(docs)  # old runs' pages would otherwise pile up beside the new one
    context = _gx_context(docs)
    failures: list[Failure] = []
    results: list[dict[str, Any]] = []
    evaluated = 0
    for spec in SUITES.values():
        outcome = _run_suite(context, spec, getattr(frames, spec.name), thresholds)
        for r in outcome.results:
            evaluated += 1
            cfg = r.expectation_config
            results.append(
                {
                    "suite": spec.name,
                    "expectation": cfg.type,
                    "column": cfg.kwargs.get("column"),
                    "description": cfg.description,
                    "success": bool(r.success),
                }
            )
            if not r.success:
                failures.append(_failure(spec, r, frames))
    if docs is not None:
        context.build_data_docs(site_names=["hndsr"])
        make_offline(docs)  # GX's pages load their CSS/JS from CDNs and fill the index in the browser
    tiles = frames.catalog["split"].value_counts() if "split" in frames.catalog.columns else {}
    counts: dict[str, Any] = {
        "tiles": len(frames.catalog),
        "sources": int(frames.ingest.loc[0, "accepted"]),
        "rejected": int(frames.ingest.loc[0, "rejected"]),
        "splits": {
            str(row.split): {"sources": int(row.n_sources), "tiles": int(tiles.get(row.split, 0))}
            for row in frames.splits.itertuples()
        },
    }
    report = ValidationReport(
        success=not failures,
        catalog=str(catalog_path),
        thresholds=_clean(asdict(thresholds)),
        counts=counts,
        evaluated=evaluated,
        failures=failures,
        results=results,
    )
    if report_path is not None:
        report.write_json(report_path)
    logger.info("validation of %s: %d expectations, %d failed", catalog_path, evaluated, len(failures))
    return report
