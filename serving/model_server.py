"""Start the predictor or the transformer as a KServe ``ModelServer``.

Both add to KServe's FastAPI app, before it starts: the admission middleware
(:mod:`serving.middleware`), the error handlers (:mod:`serving.errors`), ``GET /health`` (200 with
the status when ready, 503 with the reason otherwise) and a ``GET /v2/health/ready`` that is true only
when the model is (KServe's own says "ready" as soon as the process is up). Prometheus metrics join
KServe's on ``/metrics``.

The model-repository extension (``POST /v2/repository/models/{name}/load|unload``) is off unless an
admin token is configured (``--admin-token-file``): then it needs ``Authorization: Bearer <token>``.
``load`` really loads the checkpoint again (sha256 verified, warm-up checked); ``unload`` drops the
model, after which the liveness probe (``GET /v2/health/live``) fails so that the pod is restarted.

KServe's exception handlers are replaced by ours (:func:`serving.errors.install_error_handlers`) once
KServe has registered its own, and the OpenAPI document lists every status the inference routes answer.
:mod:`serving.protocol` makes the requests KServe reads, and every error answer, follow the protocol.

Note: ``kserve.model_server`` parses ``sys.argv`` when imported; the CLI clears it first so that its
own options never reach KServe's parser. The REST server binds 0.0.0.0 in this KServe version.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any

from serving.metrics import ServingMetrics
from serving.predictor import PredictorSettings
from serving.transformer_settings import TransformerSettings

logger = logging.getLogger(__name__)


def read_admin_token(path: str | Path | None) -> str | None:
    """The admin token from a file (a mounted Secret), or None (model-repository endpoints off)."""
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if len(token) < 16:
        from hndsr.errors import ConfigError

        raise ConfigError(
            f"the admin token in {path} is shorter than 16 characters: use a long random secret"
        )
    return token


def _install(app: Any, model: Any, status: Any, policy: Any, admin_token: str | None = None) -> None:
    from serving.errors import NotReady, ServingError, install_error_handlers, json_response
    from serving.middleware import AdmissionMiddleware
    from serving.protocol import NotFound, ProtocolMiddleware

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

    async def server_live() -> Any:
        if not model.live():
            return json_response(
                503,
                {"live": False, "error": "the model was unloaded: restart the server or load it again"},
            )
        return json_response(200, {"live": True})

    def authorise(request: Any) -> None:
        if admin_token is None:
            raise NotFound(
                "the model-repository endpoints are off on this server: start it with --admin-token-file "
                "to enable them for an operator"
            )
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_token.encode()
        ):
            err = ServingError(
                "the model-repository endpoints need Authorization: Bearer <admin token>", kind="unauthorized"
            )
            err.status = 401
            raise err

    def check_name(model_name: str) -> None:
        if model_name != model.name:
            err = ServingError(f"model {model_name!r} is not served here; this server has {model.name!r}")
            err.status, err.kind = 404, "model_not_found"
            raise err

    # Starlette endpoints (the request only): FastAPI would resolve the annotations of a nested function.
    async def repository_load(request: Any) -> Any:
        import asyncio

        model_name = request.path_params["model_name"]
        authorise(request)
        check_name(model_name)
        if not await asyncio.to_thread(model.reload):
            raise NotReady(
                f"model {model_name} did not load: {getattr(model, 'load_error', None)}", retry_after=30.0
            )
        return json_response(200, {"name": model_name, "load": True, "model_version": model.model_version})

    async def repository_unload(request: Any) -> Any:
        model_name = request.path_params["model_name"]
        authorise(request)
        check_name(model_name)
        model.unload()
        return json_response(200, {"name": model_name, "unload": True})

    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/health/ready", server_ready, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/health/live", server_live, methods=["GET"], include_in_schema=False)
    # Before KServe's routes of the same paths (registered when the server starts): these win.
    for action, endpoint in (("load", repository_load), ("unload", repository_unload)):
        app.add_route(
            f"/v2/repository/models/{{model_name}}/{action}",
            endpoint,
            methods=["POST"],
            include_in_schema=False,
        )
    app.add_middleware(ProtocolMiddleware, routes=app.router)  # inner: after admission (added next)
    app.add_middleware(AdmissionMiddleware, policy=policy)
    install_error_handlers(app)


def _patch_kserve_rest_server() -> None:
    """KServe registers its exception handlers (bodies without a kind, 500s for client mistakes) when
    the server starts, after ours: register ours again after its, and document our statuses."""
    import kserve.model_server
    from kserve.protocol.rest.server import RESTServer

    from serving.errors import install_error_handlers, openapi_with_errors

    if getattr(kserve.model_server.RESTServer, "_hndsr", False):
        return

    class HNDSRRESTServer(RESTServer):
        _hndsr = True

        def create_application(self) -> None:
            super().create_application()
            from kserve.model_server import app

            install_error_handlers(app, kserve_errors=True)
            openapi_with_errors(app)

    kserve.model_server.RESTServer = HNDSRRESTServer


def _server(http_port: int, grpc_port: int | None, predictor_config: Any = None) -> Any:
    from kserve import ModelServer

    # uvicorn rewrites the peer address from X-Forwarded-For when the peer is in FORWARDED_ALLOW_IPS
    # (default: 127.0.0.1 — any local process could name itself anyone). Trust no peer unless the
    # operator says so; a proxy in front is configured with --client-ip-header (middleware).
    os.environ.setdefault("FORWARDED_ALLOW_IPS", "")

    _patch_kserve_rest_server()
    return ModelServer(
        http_port=http_port,
        grpc_port=grpc_port if grpc_port else 0,
        enable_grpc=grpc_port is not None,
        enable_docs_url=False,
        enable_latency_logging=False,
        predictor_config=predictor_config,
    )


def run_predictor(
    *,
    model_name: str,
    http_port: int,
    grpc_port: int | None,
    settings: PredictorSettings,
    admin_token: str | None = None,
) -> None:
    """Load (errors keep the model not ready, visible on /health) and serve until SIGTERM/SIGINT."""
    from kserve.model_server import app

    from serving.middleware import AdmissionPolicy
    from serving.predictor import HNDSRPredictor

    metrics = ServingMetrics(quality_proxy=False)  # the transformer computes the quality proxy
    model = HNDSRPredictor(model_name, settings, metrics)
    model.load()

    async def status() -> dict[str, Any]:
        return model.status()

    def not_ready() -> str | None:
        if model.ready:
            return None
        return f"model {model_name} is not ready: {model.load_error or 'still loading'}"

    policy = AdmissionPolicy(
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        breaker=model.breaker,
        not_ready=not_ready,
        probe=model.probe,
    )
    _install(app, model, status, policy, admin_token)
    server = _server(http_port, grpc_port)
    server.register_model(model)  # registered even when not ready, so that /health can say why
    server.start([])


def run_transformer(
    *,
    model_name: str,
    http_port: int,
    grpc_port: int | None,
    settings: TransformerSettings,
    admin_token: str | None = None,
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
        # The body's format is checked after admission by serving.protocol (JSON or the v2 binary extension).
    )
    _install(app, model, model.status, policy, admin_token)
    if model.job_store is not None:  # the 202 of the asynchronous path and GET /jobs/{id} (serving.jobs)
        from serving.jobs.api import install_job_routes

        install_job_routes(app, model.job_store)
    server.register_model(model)
    server.start([])
