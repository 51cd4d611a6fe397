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
)

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """An error with an HTTP status, a machine-readable ``kind`` and a message for humans."""

    status: int = 500
    kind: str = "internal"

    def __init__(self, message: str, *, retry_after: float | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if kind is not None:
            self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "kind": self.kind, "status": self.status}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


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


class CircuitOpen(Unavailable):
    kind = "circuit_open"


class NotReady(Unavailable):
    kind = "not_ready"


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
    if isinstance(exc, InputError):
        return Unprocessable(message, kind="invalid_image")
    if isinstance(exc, OutputValidationError):
        return OutputCheckFailed(message)
    if isinstance(exc, CheckpointError):
        return NotReady(f"model not loaded: {message}", retry_after=30.0)
    return ServingError(message, kind="core_error")


ERROR_KIND_KEY = "hndsr_error_kind"  # scope["state"] key the metrics middleware reads


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


def install_error_handlers(app: Any) -> None:
    """Register handlers on a FastAPI/Starlette ``app`` for ServingError, core errors and request
    validation errors (KServe registers its own for its types and for Exception)."""
    from fastapi.exceptions import RequestValidationError

    async def handle(request: Any, exc: Exception) -> Any:
        err = from_exception(exc)
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
