"""Kubeflow Pipelines adapters of the training DAG.

``training_components`` holds the KFP v2 components (thin typed interfaces); the work each one does
(one call into ``hndsr`` plus its MLflow run) is in ``data_steps``, ``training_steps``,
``evaluation_steps`` and ``registry_steps``. Those take plain values and paths (no kfp types), so a
component is a one-line call and a step runs the same from a test, a notebook or a container;
``params`` is params.yaml as text (``step_params``), ``profile`` picks one of its profiles.
``tracking`` is the MLflow adapter (runs, per-epoch metrics, registry and the promotion gate) and
``report`` the HTML report and the Markdown model card.
"""
