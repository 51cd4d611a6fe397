"""KServe adapters over the HNDSR inference engine: a predictor (batched tiles on the model), a transformer
(validation, admission, tiling, stitching, encoding), admission control, Prometheus metrics and a client.

Importing this package has no side effects; kserve is imported only by the modules that need it
(``serving.predictor``, ``serving.transformer``, ``serving.model_server``).
"""
