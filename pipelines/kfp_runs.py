"""What the training and drift pipelines share on kfp: a local run and its failure as one message, and
a recurring run on a Kubeflow Pipelines API."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hndsr.errors import HNDSRError


class PipelineFailed(HNDSRError):
    """A pipeline task failed; the message names it (its log went to stdout as it ran)."""

    def __init__(self, kfp_message: str) -> None:
        super().__init__(f"{kfp_message} The task's error is in its log above.")
        self.kfp_message = kfp_message


def run_locally(
    pipeline: Callable[..., Any],
    arguments: dict[str, Any],
    *,
    pipeline_root: Path,
    cache: bool,
    cache_root: Path | None = None,
) -> Any:
    """Run ``pipeline`` here with kfp.local's SubprocessRunner in this environment (no Docker, no
    per-task venv); returns its task. A failed task raises :class:`PipelineFailed`."""
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=cache,
        cache_root=None if cache_root is None else str(cache_root),
        raise_on_error=True,
    )
    try:
        return pipeline(**arguments)
    except RuntimeError as exc:  # kfp.local: "... Inner task failed: <task>."; the task's log is above
        raise PipelineFailed(re.sub(r"\x1b\[[0-9;]*m", "", str(exc))) from None  # kfp colours its messages


def create_recurring_run(
    client: Any,
    *,
    experiment: str,
    job_name: str,
    cron: str,
    package: Path,
    params: dict[str, Any],
    enable_caching: bool,
    namespace: str | None,
) -> str:
    """A recurring run of the compiled ``package`` on ``cron`` (6 fields, seconds first); returns its id."""
    exp = client.create_experiment(experiment, namespace=namespace)
    recurring = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        cron_expression=cron,
        pipeline_package_path=str(package),
        params=params,
        enable_caching=enable_caching,
    )
    return str(recurring.recurring_run_id)
