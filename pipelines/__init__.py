"""Kubeflow pipeline definitions (``training_pipeline``, ``drift_pipeline``) and how to compile, run
locally and submit them (``runner``; ``kfp_runs`` holds what both pipelines share on kfp)."""
