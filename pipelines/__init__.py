"""Kubeflow pipeline definitions (``training_pipeline``) and how to compile, run locally and submit them
(``runner``)."""
