"""Kubeflow Pipelines adapters of the training DAG.

``training_components`` holds the KFP v2 components (thin typed interfaces); the work each one does
(one call into ``hndsr`` plus its MLflow run) is in ``data_steps``, ``training_steps``,
``evaluation_steps`` and ``registry_steps``. Those take plain values and paths (no kfp types), so a
component is a one-line call and a step runs the same from a test, a notebook or a container;
``params`` is params.yaml as text (``step_params``), ``profile`` picks one of its profiles.
``tracking`` holds the MLflow runs (per step, per-epoch metrics), ``promotion`` the promotion gate's
rule, ``registry`` the model registry it decides on, ``initial`` the pinned initial and incumbent
models, ``pytorchjob`` the PyTorchJob training backend and ``report`` the HTML report.
"""
