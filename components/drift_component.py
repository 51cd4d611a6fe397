"""KFP v2 component of the drift job: a thin typed interface over :func:`monitoring.drift.job.run_drift`.

Runs in the project's training image (hndsr, kfp, evidently installed). The HTML report becomes a KFP
HTML artifact (rendered in the run's UI); the verdict goes to the Pushgateway when one is given and
to the task's metrics.
"""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from deploy.image_tags import image_ref

BASE_IMAGE = image_ref("train")


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def drift_check(
    reference: str,
    stats: str,
    window: str,
    pushgateway: str,
    schedule: str,
    drift_share: float,
    min_samples: int,
    report: Output[HTML],
    metrics: Output[Metrics],
    stattest: str = "wasserstein_ks",
    stattest_threshold: float = 0.0,
) -> str:
    """Request statistics of the window vs the training reference; returns the state
    (ok | drift | insufficient_data). ``stattest_threshold`` 0: the method's default."""
    from monitoring.drift.job import run_drift
    from monitoring.drift.settings import DriftSettings

    result = run_drift(
        reference=reference,
        stats=stats,
        window=window,
        report=report.path,
        pushgateway=pushgateway or None,
        schedule=schedule or None,
        settings=DriftSettings(
            drift_share=drift_share,
            min_samples=min_samples,
            stattest=stattest,
            stattest_threshold=stattest_threshold or None,
        ),
    )
    for name, value in result.metric_values().items():
        metrics.log_metric(name, value)
    return result.state
