"""Protocol hygiene between the admission middleware and KServe's handlers, on both servers.

KServe's own request handling answers some client mistakes with 500s or with bodies that are not
ours, and reads ``Content-Type`` literally. This ASGI middleware sits inside
:mod:`serving.middleware` (so admission still comes first, before any body is read) and makes every
answer follow :mod:`serving.errors`:

* **Inference bodies** (``POST /v1/models/{m}:predict``, ``POST /v2/models/{m}/infer``) are checked
  by :mod:`serving.request_bodies` before KServe reads them; anything wrong is a 400 with what to send.
* **Methods and routes**: ``OPTIONS`` answers 204 with the methods the path allows; other methods on an
  inference route are 405 with ``Allow: OPTIONS, POST``; ``:explain`` and model versions (not served)
  are 404.
* **Every error body** is ``{"error", "kind", "status"}``: an error answer from KServe, Starlette or
  FastAPI without that shape is rewritten (the status kept, the kind named after it), and an exception
  that escapes the handlers becomes a 500 with the same body here — the connection stays usable
  (Starlette's outermost handler would re-raise it to the server, which drops the keep-alive
  connection).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from serving.errors import ERROR_KIND_KEY, ServingError
from serving.middleware import ASGIApp, Message, Receive, Scope, Send, replay_body
from serving.request_bodies import normalise

logger = logging.getLogger(__name__)

INFER_PATH = re.compile(r"^/v1/models/[^/]+:predict$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
NOT_SERVED = re.compile(r"^/v1/models/[^/]+:explain$|^/v2/models/[^/]+/versions/[^/]+(/.*)?$")
KIND_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal",
    501: "not_implemented",
    502: "predictor_error",
    503: "unavailable",
    504: "predictor_timeout",
}


class NotFound(ServingError):
    status, kind = 404, "not_found"


class MethodNotAllowed(ServingError):
    status, kind = 405, "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


# ------------------------------------------------------------------------------------ error bodies


def error_body(status: int, body: bytes, path: str, method: str) -> bytes | None:
    """The body of an error answer in the documented shape; ``None`` when it already has it."""
    message = ""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
        message = body.decode("utf-8", errors="replace")[:500]
    if isinstance(doc, dict):
        if {"error", "kind", "status"} <= set(doc) or not set(doc) <= {"error", "detail"}:
            return None  # ours, or a document of its own (GET /health's status and reason): kept
        detail = doc.get("error", doc.get("detail", ""))
        message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()[:500]
    if status == 404 and message in ("", "Not Found"):
        message = (
            f"no route {method} {path}: the API is POST /v1/models/{{model}}:predict, "
            "POST /v2/models/{model}/infer, GET /v2/models/{model}, GET /health, GET /metrics"
        )
    elif status == 405 and message in ("", "Method Not Allowed"):
        message = f"{method} is not allowed on {path} (see the Allow header)"
    kind = KIND_BY_STATUS.get(status, "error" if status < 500 else "internal")
    return orjson.dumps({"error": message or f"HTTP {status}", "kind": kind, "status": status})


async def send_error(send: Send, err: ServingError) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers().items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------ middleware


class ProtocolMiddleware:
    """See the module docstring. ``routes``: the app's router, to list the methods a path allows."""

    def __init__(self, app: ASGIApp, routes: Any = None) -> None:
        self.app = app
        self.routes = routes

    def allowed(self, path: str) -> list[str]:
        if INFER_PATH.match(path):
            return ["OPTIONS", "POST"]
        methods: set[str] = set()
        for route in getattr(self.routes, "routes", []):
            regex = getattr(route, "path_regex", None)
            if regex is not None and regex.match(path):
                methods |= set(getattr(route, "methods", None) or ())
        return sorted(methods | {"OPTIONS"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        response: dict[str, Any] = {"started": False, "held": None, "chunks": []}

        async def send_conforming(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["started"] = True
                if int(message["status"]) >= 400:
                    response["held"] = message
                    return
            elif message["type"] == "http.response.body" and response["held"] is not None:
                response["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                held, response["held"] = response["held"], None
                status, body = int(held["status"]), b"".join(response["chunks"])
                fixed = error_body(status, body, path, method)
                if fixed is not None:
                    body = fixed
                    kept = [
                        (k, v)
                        for k, v in held.get("headers", [])
                        if k.lower() not in (b"content-length", b"content-type")
                    ]
                    held = {**held, "headers": [*kept, (b"content-type", b"application/json")]}
                headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self._dispatch(scope, receive, send_conforming, method, path)
        except ServingError as err:
            self._mark(scope, err)
            if not response["started"]:
                await send_error(send, err)
        except Exception as exc:  # a bug or a library's surprise: a 500 in our shape, connection kept
            logger.exception("unhandled %s on %s %s", type(exc).__name__, method, path)
            internal = ServingError(f"internal error ({type(exc).__name__}): {str(exc)[:300]}")
            self._mark(scope, internal)
            if not response["started"]:
                await send_error(send, internal)

    @staticmethod
    def _mark(scope: Scope, err: ServingError) -> None:
        state = scope.setdefault("state", {})
        if isinstance(state, dict):
            state[ERROR_KIND_KEY] = err.kind

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        if method == "OPTIONS":
            allow = ", ".join(self.allowed(path))
            await send(
                {"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if NOT_SERVED.match(path):
            raise NotFound(
                f"{path} is not served: explanations and model versions are not part of this API; use "
                "POST /v1/models/{model}:predict or POST /v2/models/{model}/infer"
            )
        if not INFER_PATH.match(path):
            await self.app(scope, receive, send)
            return
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed on {path}: send a POST", "OPTIONS, POST")
        body = await _read_all(receive)
        if body is None:
            return
        scope, body = normalise(scope, body)
        await self.app(scope, replay_body(body, receive), send)


async def _read_all(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
