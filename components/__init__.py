"""Kubeflow Pipelines adapters of the training DAG.

``training_components`` holds the KFP v2 components (thin typed interfaces), ``steps`` the work each
one does (one call into ``hndsr`` plus tracking), ``tracking`` the MLflow adapter (runs, per-epoch
metrics, registry and the promotion gate) and ``report`` the HTML report and the Markdown model card.
"""
