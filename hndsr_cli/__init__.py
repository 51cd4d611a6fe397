"""The ``hndsr`` entry point: the core's commands plus each adapter package's sub-commands.

The layers run one way (the import contract in pyproject.toml): this package composes the adapters
(serving, pipelines, components, monitoring, data_validation, lake, deploy), which use the core (hndsr),
which imports none of them. Each adapter's ``register`` adds its commands; its heavy libraries (kserve,
kfp, mlflow, evidently, great_expectations, minio) are imported only when one of them runs.
"""

from __future__ import annotations

from data_validation.cli import register as register_validation
from deploy.cli import register as register_deploy
from hndsr.cli import app, data_app, friendly_errors, parse_sets
from lake.cli import register as register_lake
from monitoring.cli import register as register_monitoring
from pipelines.cli import register as register_pipelines
from serving.cli import register as register_serving

register_validation(app, friendly_errors=friendly_errors, parse_sets=parse_sets)
register_lake(data_app, friendly_errors=friendly_errors)
register_serving(app, friendly_errors=friendly_errors)  # serve predictor|transformer|worker|ingress|local
register_monitoring(app, friendly_errors=friendly_errors)
register_pipelines(app, friendly_errors=friendly_errors)
register_deploy(app, friendly_errors=friendly_errors)

__all__ = ["app"]
