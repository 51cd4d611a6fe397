"""Typed serving errors and their HTTP statuses — the one place where errors become status codes.

Rules: a client's mistake is a 4xx whose message says what to change (400 malformed request, 413 too
big, 422 well-formed but unusable values, 429 rate limited); the server's own trouble is a 5xx
(500 the model failed, 502 the predictor misbehaved, 503 unavailable or overloaded, 504 too slow).
Every 429 and 503 carries ``Retry-After``. Core errors (:mod:`hndsr.errors`) and KServe's own are
mapped here too, so no other module picks a status code.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hndsr.errors import (
    CheckpointError,
    HNDSRError,
    ImageTooSmallError,
    InputError,
    OutputValidationError,
    ScaleError,
    UnsupportedFormatError,
    ValueRangeError,
)

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """An error with an HTTP status, a machine-readable ``kind`` and a message for humans."""

    status: int = 500
    kind: str = "internal"
    breaker_neutral: bool = False  # True: never counts against a circuit breaker (the server answered)

    def __init__(self, message: str, *, retry_after: float | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if kind is not None:
            self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "kind": self.kind, "status": self.status}

    extra_headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        out = dict(self.extra_headers or {})
        if self.retry_after is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


# ------------------------------------------------------------------------------------ client mistakes


class BadRequest(ServingError):
    """Malformed request: not JSON, wrong structure or types, missing fields, invalid base64."""

    status, kind = 400, "bad_request"


class PayloadTooLarge(ServingError):
    """Body, image or tile count above the limits of the synchronous path."""

    status, kind = 413, "payload_too_large"


class Unprocessable(ServingError):
    """Well-formed request with unusable values: scale or steps out of range, undecodable image."""

    status, kind = 422, "unprocessable"


class Unauthorized(ServingError):
    """An ``X-Api-Key`` this server did not issue (only when it has a key file)."""

    status, kind = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'ApiKey header="X-Api-Key"'}


class RateLimited(ServingError):
    status, kind = 429, "rate_limited"


# ------------------------------------------------------------------------------------ server trouble


class InferenceFailed(ServingError):
    """The model raised (out of memory, device error)."""

    status, kind = 500, "inference_failed"


class OutputCheckFailed(ServingError):
    """The model's output failed a check (non-finite, out of range, degenerate)."""

    status, kind = 500, "output_check"


class PredictorFailed(ServingError):
    """The predictor answered with an error or an unreadable response."""

    status, kind = 502, "predictor_error"


class Unavailable(ServingError):
    """Not ready, overloaded or failing fast; always comes with Retry-After."""

    status, kind = 503, "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, kind: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, kind=kind)


class QueueFull(Unavailable):
    kind = "queue_full"

    def __init__(
        self, message: str, *, retry_after: float = 1.0, admission: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.admission = admission  # the figures of the admission rule that refused it

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.admission is not None:
            body["admission"] = self.admission
        return body


class CircuitOpen(Unavailable):
    kind = "circuit_open"


class NotReady(Unavailable):
    kind = "not_ready"
    breaker_neutral = True  # no model to fail: nothing for a breaker to learn


class PredictorUnavailable(Unavailable):
    kind = "predictor_unavailable"


class PredictorTimeout(ServingError):
    status, kind = 504, "predictor_timeout"


# ------------------------------------------------------------------------------------ mapping


def from_exception(exc: BaseException) -> ServingError:
    """Any exception -> the ServingError a client sees. Unknown exceptions are 500s (and logged)."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, HNDSRError):
        return _from_core(exc)
    name = type(exc).__name__
    # KServe's own typed errors (matched by name: this module must not need kserve to import).
    if name == "InvalidInput":
        return BadRequest(f"invalid request: {exc}")
    if name in ("ModelNotReady", "ServerNotReady", "NoModelReady"):
        return NotReady(f"{exc}; retry shortly, or check GET /health for the reason")
    if name == "ModelNotFound":
        err = ServingError(f"{exc}; list the models with GET /v1/models", kind="model_not_found")
        err.status = 404
        return err
    if name == "UnsupportedProtocol":
        return BadRequest(f"unsupported protocol: {exc}")
    if name == "ServerNotLive":
        return Unavailable(f"{exc}", kind="not_live", retry_after=5.0)
    if name == "InferenceError":
        logger.error("inference error: %s", exc)
        return InferenceFailed(f"inference failed: {exc}")
    status = getattr(exc, "status_code", None)
    if (
        isinstance(status, int)
        and 400 <= status < 600
        and name in ("HTTPException", "StarletteHTTPException")
    ):
        detail = getattr(exc, "detail", "") or ""
        err = ServingError(str(detail), kind=_KIND_BY_STATUS.get(status, "error"))
        err.status = status
        if status == 405:
            allow = (getattr(exc, "headers", None) or {}).get("Allow")
            if allow:
                err.extra_headers = {"Allow": allow}
        return err
    if isinstance(exc, NotImplementedError):
        err = ServingError(f"not implemented: {exc}", kind="not_found")
        err.status = 404
        return err
    logger.error("unexpected %s while serving: %s", name, exc, exc_info=exc)
    return ServingError(f"internal error ({name}): {exc}")


def _from_core(exc: HNDSRError) -> ServingError:
    message = str(exc)
    if isinstance(exc, ScaleError):
        return Unprocessable(message, kind="invalid_scale")
    if isinstance(exc, ImageTooSmallError):
        return Unprocessable(message, kind="image_too_small")
    if isinstance(exc, UnsupportedFormatError):
        return Unprocessable(message, kind="unsupported_format")
    if isinstance(exc, ValueRangeError):
        return Unprocessable(message, kind="invalid_values")
    if isinstance(exc, InputError):
        return Unprocessable(message, kind="invalid_image")
    if isinstance(exc, OutputValidationError):
        return OutputCheckFailed(message)
    if isinstance(exc, CheckpointError):
        return NotReady(f"model not loaded: {message}", retry_after=30.0)
    return ServingError(message, kind="core_error")


ERROR_KIND_KEY = "hndsr_error_kind"  # scope["state"] key the metrics middleware reads
_KIND_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    import orjson
    from starlette.responses import Response

    return Response(
        content=orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def _mark(request: Any, err: ServingError) -> None:
    state = request.scope.setdefault("state", {})
    if isinstance(state, dict):
        state[ERROR_KIND_KEY] = err.kind


def install_error_handlers(app: Any, *, kserve_errors: bool = False) -> None:
    """Register handlers on a FastAPI/Starlette ``app`` for ServingError, core errors and request
    validation errors; with ``kserve_errors`` (once KServe has registered its own handlers) also for
    KServe's error types, Starlette's HTTP errors and ``NotImplementedError``, replacing KServe's."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def handle(request: Any, exc: Exception) -> Any:
        err = from_exception(exc)
        if err.status == 404 and err.message in ("", "Not Found"):
            err.message = (
                f"no route {request.method} {request.url.path}: the API is "
                "POST /v1/models/{model}:predict, POST /v2/models/{model}/infer, GET /v2/models/{model}, "
                "GET /health, GET /metrics"
            )
        _mark(request, err)
        if err.status >= 500:
            logger.warning("%s %s: %s", err.status, err.kind, err.message)
        return json_response(err.status, err.body(), err.headers())

    async def handle_validation(request: Any, exc: Exception) -> Any:
        details: list[dict[str, Any]] = list(getattr(exc, "errors", lambda: [])())
        parts = []
        for d in details[:5]:
            loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {d.get('msg', 'invalid')}")
        err = BadRequest(
            "invalid Open Inference Protocol v2 request ("
            + "; ".join(parts)
            + '); send {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], '
            '"data": ["<base64 image>"]}], "parameters": {"scale": 4}}'
        )
        _mark(request, err)
        return json_response(err.status, err.body())

    app.add_exception_handler(ServingError, handle)
    app.add_exception_handler(HNDSRError, handle)
    app.add_exception_handler(RequestValidationError, handle_validation)
    if kserve_errors:
        from kserve import errors as kserve_errors_module

        for name in (
            "InvalidInput",
            "InferenceError",
            "ModelNotFound",
            "ModelNotReady",
            "UnsupportedProtocol",
            "ServerNotLive",
            "ServerNotReady",
        ):
            cls = getattr(kserve_errors_module, name, None)
            if cls is not None:
                app.add_exception_handler(cls, handle)
        app.add_exception_handler(NotImplementedError, handle)
        app.add_exception_handler(HTTPException, handle)


ERROR_RESPONSES: dict[int, str] = {
    400: "Malformed request: not JSON, wrong structure or types, unknown keys, bad base64 or headers",
    404: "No such route or model",
    413: "Body, image, tile count or instances over the limits",
    422: "Well-formed request with unusable values (scale, steps, seed, image content, value range)",
    429: "Rate limited (Retry-After)",
    500: "The model failed (inference_failed, output_check)",
    502: "The predictor misbehaved",
    503: "Not ready, overloaded or circuit open (Retry-After)",
    504: "The predictor was too slow",
}


def openapi_with_errors(app: Any) -> None:
    """Make ``app.openapi()`` list the error statuses of the inference routes with the error body."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return dict(app.openapi_schema)
        schema = base()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Error"] = {
            "type": "object",
            "required": ["error", "kind", "status"],
            "properties": {
                "error": {"type": "string", "description": "what went wrong and what to change"},
                "kind": {"type": "string", "description": "machine-readable kind (serving/errors.py)"},
                "status": {"type": "integer"},
            },
        }
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, item in schema.get("paths", {}).items():
            post = item.get("post")
            if post is None or not (path.endswith(":predict") or path.endswith("/infer")):
                continue
            responses = post.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation error: ours has the error body
            for status, description in ERROR_RESPONSES.items():
                responses[str(status)] = {"description": description, **ref}
        app.openapi_schema = schema
        return dict(schema)

    app.openapi = openapi
