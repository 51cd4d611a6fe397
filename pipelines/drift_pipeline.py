"""The drift pipeline (one task) for a Kubeflow Pipelines recurring run, beside the Kubernetes CronJob.

``compile_drift_pipeline`` writes the YAML, ``run_drift_local`` runs it offline (kfp.local
SubprocessRunner in this environment) and ``schedule_drift`` creates the recurring run on a KFP API.
"""

import tempfile
from pathlib import Path
from typing import Any

from kfp import dsl

from components.drift_component import drift_check
from pipelines.kfp_runs import create_recurring_run, run_locally


@dsl.pipeline(name="hndsr-drift", description="Request statistics vs the training reference (Evidently).")
def drift_pipeline(
    reference: str,
    stats: str,
    window: str = "24h",
    pushgateway: str = "",
    schedule: str = "",
    drift_share: float = 0.3,
    min_samples: int = 50,
    stattest: str = "wasserstein_ks",
    stattest_threshold: float = 0.0,
) -> str:
    task = drift_check(
        reference=reference,
        stats=stats,
        window=window,
        pushgateway=pushgateway,
        schedule=schedule,
        drift_share=drift_share,
        min_samples=min_samples,
        stattest=stattest,
        stattest_threshold=stattest_threshold,
    )
    task.set_caching_options(False)  # every run reads a new window of requests
    return task.outputs["Output"]


def compile_drift_pipeline(out: str | Path) -> Path:
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(drift_pipeline, str(out))
    return out


def run_drift_local(arguments: dict[str, Any], *, pipeline_root: str | Path) -> str:
    """Run the pipeline here; returns the drift state."""
    task = run_locally(drift_pipeline, arguments, pipeline_root=Path(pipeline_root).resolve(), cache=False)
    return str(task.output)


def schedule_drift(
    host: str,
    arguments: dict[str, Any],
    *,
    cron: str = "0 0 * * * *",
    experiment: str = "hndsr-monitoring",
    namespace: str | None = None,
) -> str:
    """A recurring run on the KFP API at ``host`` (6-field cron, seconds first; default hourly).
    Pass ``schedule`` in ``arguments`` to match the cron, so the staleness alert knows the interval."""
    from kfp import Client

    client = Client(host=host, namespace=namespace)
    return create_recurring_run(
        client,
        experiment=experiment,
        job_name="hndsr-drift",
        cron=cron,
        package=compile_drift_pipeline(Path(tempfile.mkdtemp()) / "drift.yaml"),
        params=arguments,
        enable_caching=False,
        namespace=namespace,
    )
