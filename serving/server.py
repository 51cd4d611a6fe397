"""Start the predictor or the transformer as a KServe ``ModelServer``.

Both add to KServe's FastAPI app, before it starts: the admission middleware
(:mod:`serving.middleware`), the error handlers (:mod:`serving.errors`), ``GET /health`` (200 with
the status when ready, 503 with the reason otherwise) and a ``GET /v2/health/ready`` that is true only
when the model is (KServe's own says "ready" as soon as the process is up). Prometheus metrics join
KServe's on ``/metrics``.

Note: ``kserve.model_server`` parses ``sys.argv`` when imported; the CLI clears it first so that its
own options never reach KServe's parser. The REST server binds 0.0.0.0 in this KServe version.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from serving.metrics import ServingMetrics
from serving.predictor import PredictorSettings
from serving.transformer import TransformerSettings

logger = logging.getLogger(__name__)


def _install(app: Any, model: Any, status: Any, policy: Any) -> None:
    from serving.errors import install_error_handlers, json_response
    from serving.middleware import AdmissionMiddleware

    async def health() -> Any:
        body = await status()
        return json_response(
            200 if body["ready"] else 503, body, None if body["ready"] else {"Retry-After": "5"}
        )

    async def server_ready() -> Any:
        ready = await model.healthy()
        body = {"ready": ready}
        if not ready:
            return json_response(503, body | {"error": (await status())["reason"]}, {"Retry-After": "5"})
        return json_response(200, body)

    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/health/ready", server_ready, methods=["GET"], include_in_schema=False)
    app.add_middleware(AdmissionMiddleware, policy=policy)
    install_error_handlers(app)


def _server(http_port: int, grpc_port: int | None, predictor_config: Any = None) -> Any:
    from kserve import ModelServer

    # uvicorn rewrites the peer address from X-Forwarded-For when the peer is in FORWARDED_ALLOW_IPS
    # (default: 127.0.0.1 — any local process could name itself anyone). Trust no peer unless the
    # operator says so; a proxy in front is configured with --client-ip-header (middleware).
    os.environ.setdefault("FORWARDED_ALLOW_IPS", "")

    return ModelServer(
        http_port=http_port,
        grpc_port=grpc_port if grpc_port else 0,
        enable_grpc=grpc_port is not None,
        enable_docs_url=False,
        enable_latency_logging=False,
        predictor_config=predictor_config,
    )


def run_predictor(
    *, model_name: str, http_port: int, grpc_port: int | None, settings: PredictorSettings
) -> None:
    """Load (errors keep the model not ready, visible on /health) and serve until SIGTERM/SIGINT."""
    from kserve.model_server import app

    from serving.middleware import AdmissionPolicy
    from serving.predictor import HNDSRPredictor

    metrics = ServingMetrics()
    model = HNDSRPredictor(model_name, settings, metrics)
    model.load()

    async def status() -> dict[str, Any]:
        return model.status()

    def not_ready() -> str | None:
        if model.ready:
            return None
        return f"model {model_name} is not ready: {model.load_error or 'still loading'}"

    policy = AdmissionPolicy(
        max_body_bytes=512 * 2**20,
        metrics=metrics,
        breaker=model.breaker,
        not_ready=not_ready,
        probe=model.probe,
    )
    _install(app, model, status, policy)
    server = _server(http_port, grpc_port)
    server.register_model(model)  # registered even when not ready, so that /health can say why
    server.start([])


def run_transformer(
    *, model_name: str, http_port: int, grpc_port: int | None, settings: TransformerSettings
) -> None:
    from kserve.predictor_config import PredictorConfig

    from serving.middleware import AdmissionPolicy, ClientIdentity, read_api_keys
    from serving.transformer import HNDSRTransformer

    identity = ClientIdentity.create(
        read_api_keys(settings.api_keys_file) if settings.api_keys_file else None,
        settings.client_ip_header,
        settings.trusted_proxies,
    )

    metrics = ServingMetrics()
    model = HNDSRTransformer(model_name, settings, metrics)
    model.load()
    config = PredictorConfig(
        predictor_host=settings.predictor_host,
        predictor_protocol=settings.predictor_protocol,
        predictor_request_timeout_seconds=int(settings.timeout_s),
    )
    server = _server(http_port, grpc_port, predictor_config=config)
    from kserve.model_server import app

    policy = AdmissionPolicy(
        max_body_bytes=settings.limits.max_body_bytes,
        metrics=metrics,
        breaker=model.breaker,
        limiter=model.limiter,
        gate=model.gate,
        identity=identity,
        probe=model.probe,
        json_example='{"instances": [{"image_b64": "<base64 PNG/JPEG/TIFF>", "scale": 4}]} (v1) or '
        '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}], '
        '"parameters": {"scale": 4}} (v2)',
    )
    _install(app, model, model.status, policy)
    if model.jobs is not None:  # the 202 of the asynchronous path and GET /jobs/{id} (serving.jobs)
        from serving.jobs.api import install_job_routes

        install_job_routes(app, model.jobs)
    server.register_model(model)
    server.start([])
