"""MLflow runs: one per pipeline step (nested under the pipeline's run) and per-epoch training
metrics. The core never imports mlflow; it reports through ``hndsr.training.TrainingCallback``.

Tracking URI: the given one, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` with
artifacts in ``<cwd>/mlartifacts``. A tracking server with S3 artifacts works the same way (its
clients read ``AWS_ENDPOINT_URL`` / keys from the environment).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

EXPERIMENT = "hndsr"
CHECKPOINT_ARTIFACT = "checkpoint"  # artifact path of a checkpoint directory inside a run
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_tracking_uri(uri: str = "") -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _local_artifact_root(uri: str) -> str | None:
    """``file://<dir of the sqlite file>/mlartifacts`` for a sqlite store (MLflow would use ./mlruns of
    whatever directory a step happens to run in)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(urlparse(uri).path)
    return (db.parent / "mlartifacts").resolve().as_uri()


def use_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """Point mlflow at ``tracking_uri`` and make ``name`` the active experiment; returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=_local_artifact_root(uri))
        except MlflowException:  # created by a concurrent step meanwhile
            found = client.get_experiment_by_name(name)
            assert found is not None
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
    if found is None or found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # MLflow 3 opens an experiment without a kind in its GenAI view (traces, token usage).
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: Set by ``hndsr pipeline run --local`` around a pipeline run: the steps' runs nest under it.
PARENT_RUN_ENV = "HNDSR_PARENT_RUN_ID"


def start_pipeline_run(tracking_uri: str, name: str, tags: Mapping[str, str]) -> str:
    """The parent MLflow run of one pipeline run; its id goes to the steps through ``PARENT_RUN_ENV``
    (kfp.local's tasks inherit the environment). Returns the run id."""
    use_experiment(tracking_uri)
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    run = client.create_run(
        experiment.experiment_id, run_name=name, tags={"hndsr.step": "pipeline", **dict(tags)}
    )
    return str(run.info.run_id)


def end_pipeline_run(
    tracking_uri: str, run_id: str, summary: Mapping[str, Any] | None, error: str = ""
) -> None:
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if summary is not None:
        client.log_dict(run_id, dict(summary), "summary.json")
        client.set_tag(
            run_id, "hndsr.decision", f"version {summary.get('version')} -> {summary.get('alias')}"
        )
    if error:
        client.set_tag(run_id, "hndsr.error", error[:5000])
    client.set_terminated(run_id, "FAILED" if error else "FINISHED")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"train.operator.steps": "120"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


@contextmanager
def step_run(
    tracking_uri: str,
    step: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one pipeline step, tagged ``hndsr.step``; a failing step ends it FAILED."""
    use_experiment(tracking_uri)
    parent = os.environ.get(PARENT_RUN_ENV, "")
    nesting = {"mlflow.parentRunId": parent, "hndsr.pipeline_run": parent} if parent else {}
    with mlflow.start_run(run_name=step, tags={"hndsr.step": step, **nesting, **(tags or {})}) as run:
        if params:
            mlflow.log_params(flatten(params))
        yield run


class MlflowEpochLogger:
    """A ``hndsr.training.TrainingCallback``: every epoch's metrics of a stage, at its global step."""

    def __call__(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        values = {f"{stage}.{k}": v for k, v in metrics.items() if math.isfinite(v)}
        mlflow.log_metrics(values | {f"{stage}.epoch": float(epoch)}, step=step)
