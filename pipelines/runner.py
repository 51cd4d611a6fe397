"""Compile the training pipeline, run it offline with ``kfp.local``, or submit it to Kubeflow Pipelines.

The local run uses kfp.local's SubprocessRunner in this Python environment (no Docker, no per-task
venv) with its task cache on disk: an unchanged second run is served from the cache, except
``register``, which is idempotent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hndsr import __version__
from hndsr.errors import InputError
from pipelines.kfp_runs import PipelineFailed, create_recurring_run, run_locally

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE_ROOT = Path(".pipeline")  # local task outputs and the task cache
# What the steps run; the CLI adapters (hndsr/cli*.py) do not change results.
CODE_PACKAGES = ("hndsr", "components", "pipelines", "data_validation")


@dataclass
class PipelineArguments:
    data_uri: str = "data/raw"
    params: str = ""  # params.yaml text
    profile: str = ""
    autoencoder_epochs: int = 0
    operator_epochs: int = 0
    diffusion_epochs: int = 0
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    diffusion_steps: int = 0
    lpips: bool = True
    lpips_tolerance: float = 0.01
    min_gain_db: float = 0.05
    init_from: str = "release"
    mlflow_uri: str = ""
    model_name: str = "hndsr"
    training_backend: str = "in-process"
    data_version: str = ""
    code_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_params(path: str | Path, profile: str = "") -> str:
    """params.yaml (profiles included) as one line of JSON: the pipeline's ``params`` argument (one line,
    because KFP copies defaults into a YAML comment). Checked here so a typo fails now, not in a task."""
    from hndsr.config import parse_params

    path = Path(path)
    if not path.is_file():
        raise InputError(f"params file {path} not found: run from the project root or pass --params PATH")
    tree = yaml.safe_load(path.read_text()) or {}
    parse_params(tree, profile=profile or None)
    return json.dumps(tree, sort_keys=True)


def default_profile(params: str) -> str:
    return str(((yaml.safe_load(params) or {}).get("pipeline") or {}).get("profile", ""))


def _digest_files(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def data_fingerprint(data_uri: str) -> str:
    """Content digest of the raw data: a local folder's files, or an S3 prefix's etags."""
    from lake.storage import S3Settings, is_s3_uri, parse_s3_uri

    if is_s3_uri(data_uri):
        settings = S3Settings.from_env()
        bucket, prefix = parse_s3_uri(data_uri)
        objects = settings.client().list_objects(bucket, prefix=prefix.rstrip("/") + "/", recursive=True)
        listing = sorted(f"{o.object_name}:{o.etag}" for o in objects)
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]
    root = Path(data_uri)
    if not root.is_dir():
        raise InputError(
            f"data folder {data_uri} does not exist: run `hndsr data sample --out {data_uri}` or pass "
            "--data DIR|s3://bucket/prefix"
        )
    return _digest_files(root, [p for p in root.rglob("*") if p.is_file()])


def code_fingerprint() -> str:
    """Digest of the Python sources the steps run (plus the package version)."""
    files: list[Path] = []
    roots: list[Path] = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        roots.append(root)
        files += [p for p in root.rglob("*.py") if not (name == "hndsr" and p.name.startswith("cli"))]
    h = hashlib.sha256(__version__.encode())
    for root in roots:
        h.update(_digest_files(root.parent, [f for f in files if root in f.parents]).encode())
    return h.hexdigest()[:16]


def compile_pipeline(out: str | Path, arguments: PipelineArguments | None = None) -> Path:
    """Write the pipeline YAML (deterministic for the same code and defaults); with
    ``training_backend="pytorchjob"`` the train steps mount the training volume."""
    from kfp import compiler

    from pipelines.training_pipeline import pipeline_for

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arguments = arguments or PipelineArguments()
    defaults = {k: v for k, v in arguments.as_dict().items() if k not in ("data_version", "code_version")}
    pipeline = pipeline_for(arguments.training_backend)
    compiler.Compiler().compile(pipeline, str(out), pipeline_parameters=defaults)
    return out


def run_local(
    arguments: PipelineArguments, *, pipeline_root: str | Path = DEFAULT_PIPELINE_ROOT, cache: bool = True
) -> dict[str, Any]:
    """Run the whole DAG here (kfp.local SubprocessRunner in this environment); returns the summary."""
    import os
    import time

    from components import tracking
    from pipelines.training_pipeline import training_pipeline

    root = Path(pipeline_root).resolve()
    parent = tracking.start_pipeline_run(
        arguments.mlflow_uri,
        f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
        {
            "hndsr.data_version": arguments.data_version,
            "hndsr.code_version": arguments.code_version,
            "hndsr.profile": arguments.profile or "base",
            "hndsr.init_from": arguments.init_from,
            "hndsr.pipeline_root": str(root),
        },
    )
    os.environ[tracking.PARENT_RUN_ENV] = parent
    try:
        task = run_locally(
            training_pipeline, arguments.as_dict(), pipeline_root=root, cache=cache, cache_root=root / "cache"
        )
    except PipelineFailed as exc:
        tracking.end_pipeline_run(arguments.mlflow_uri, parent, None, error=exc.kfp_message)
        raise
    finally:
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
    summary: dict[str, Any] = json.loads(task.output) | {"mlflow_pipeline_run": parent}
    tracking.end_pipeline_run(arguments.mlflow_uri, parent, summary)
    return summary


def submit(
    host: str,
    arguments: PipelineArguments,
    *,
    experiment: str = "hndsr",
    run_name: str = "",
    cron: str = "",
    namespace: str | None = None,
) -> str:
    """Submit to a Kubeflow Pipelines API at ``host``: a one-off run, or a recurring run when ``cron``
    (6-field cron: seconds first) is given. Returns the run (or recurring run) id."""
    import tempfile

    from kfp import Client

    client = Client(host=host, namespace=namespace)
    args = arguments.as_dict()
    name = run_name or f"hndsr-{arguments.profile or 'base'}"
    if not cron:
        run = client.create_run_from_pipeline_package(
            str(compile_pipeline(Path(tempfile.mkdtemp()) / "pipeline.yaml", arguments)),
            arguments=args,
            run_name=name,
            experiment_name=experiment,
        )
        return str(run.run_id)
    return create_recurring_run(
        client,
        experiment=experiment,
        job_name=name,
        cron=cron,
        package=compile_pipeline(Path(tempfile.mkdtemp()) / "pipeline.yaml", arguments),
        params=args,
        enable_caching=True,
        namespace=namespace,
    )
