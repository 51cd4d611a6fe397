"""Protocol hygiene between the admission middleware and KServe's handlers, on both servers.

KServe's own request handling answers some client mistakes with 500s or with bodies that are not
ours, and reads ``Content-Type`` literally. This ASGI middleware sits inside
:mod:`serving.middleware` (so admission still comes first, before any body is read) and makes every
answer follow :mod:`serving.errors`:

* **Inference bodies** (``POST /v1/models/{m}:predict``, ``POST /v2/models/{m}/infer``): a body is JSON
  unless it carries ``Inference-Header-Content-Length`` (the v2 binary tensor extension). The JSON
  needs no ``Content-Type`` (tritonclient sends none); any JSON media type is accepted in any case and
  with parameters (``application/json; charset=utf-8``); it must parse (strictly: no NaN) and nest at
  most :data:`MAX_JSON_DEPTH` deep. A binary request's header length must be a plain decimal within the
  body, its JSON head must parse and every binary input's ``binary_data_size`` must match its shape and
  datatype, byte for byte, before KServe reads it. BYTES inputs are handed on as JSON strings: base64
  text as it is, anything else (an image file itself) base64-encoded — so a stock client can send the
  file's bytes. Anything else is a 400 with what to send.
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

import base64
import logging
import math
import re
from typing import Any

import orjson

from serving.errors import ERROR_KIND_KEY, BadRequest, ServingError
from serving.middleware import ASGIApp, Message, Receive, Scope, Send, replay_body

logger = logging.getLogger(__name__)

HEADER_LENGTH = b"inference-header-content-length"
MAX_JSON_DEPTH = 64
INFER_PATH = re.compile(r"^/v1/models/[^/]+:predict$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
NOT_SERVED = re.compile(r"^/v1/models/[^/]+:explain$|^/v2/models/[^/]+/versions/[^/]+(/.*)?$")
_JSON_MEDIA = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
_B64_TEXT = re.compile(rb"^[A-Za-z0-9+/\r\n]*={0,2}$")
DATATYPE_SIZES = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
}
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
_V2_EXAMPLE = (
    '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}], '
    '"parameters": {"scale": 4}}'
)


class NotFound(ServingError):
    status, kind = 404, "not_found"


class MethodNotAllowed(ServingError):
    status, kind = 405, "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


# ------------------------------------------------------------------------------------ request bodies


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (iterative: deep input cannot exhaust the stack); stops
    counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(body: bytes, what: str = "the body") -> Any:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"{what} is not valid JSON ({exc}); send a JSON object such as "
            '{"instances": [{"image_b64": "<base64 PNG/JPEG/TIFF>", "scale": 4}]} (v1) or '
            f"{_V2_EXAMPLE} (v2), or a v2 binary request with Inference-Header-Content-Length"
        ) from exc
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels; no valid request does")
    return doc


def header_length(raw: bytes, body_size: int) -> int:
    """The JSON head's length from ``Inference-Header-Content-Length``: a plain decimal within the body."""
    text = raw.decode("latin-1").strip()
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise BadRequest(
            f"Inference-Header-Content-Length must be the JSON head's length in bytes (a plain decimal "
            f"integer), got {text[:40]!r}",
            kind="invalid_header",
        )
    length = int(text)
    if not 0 < length <= body_size:
        raise BadRequest(
            f"Inference-Header-Content-Length is {length}, but the body has {body_size} bytes: it must count "
            "the JSON head that starts the body",
            kind="invalid_header",
        )
    return length


def _elements(shape: Any, where: str) -> int:
    if not isinstance(shape, list) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape
    ):
        raise BadRequest(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return math.prod(shape)


def _split_bytes_tensor(raw: bytes, count: int, where: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"{where}: truncated BYTES element (a 4-byte length prefix is cut off)")
        size = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise BadRequest(f"{where}: a BYTES element claims {size} bytes, only {len(raw) - pos} remain")
        out.append(raw[pos : pos + size])
        pos += size
    if len(out) != count:
        raise BadRequest(f"{where}: {len(out)} BYTES elements for a shape of {count}")
    return out


def _as_text(element: bytes) -> str:
    """A BYTES element as a JSON string: base64 text as it is, any other bytes base64-encoded."""
    if _B64_TEXT.match(element):
        return element.decode("ascii")
    return base64.b64encode(element).decode("ascii")


def binary_request(body: bytes, length: int) -> tuple[bytes, int | None]:
    """Check a v2 binary-extension request; returns the body and head length to hand to KServe, with
    every BYTES input moved into the JSON head (``None``: no binary data remains, plain JSON)."""
    head = parse_json(body[:length], "the JSON head of the binary request")
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise BadRequest(f"the JSON head must be a v2 request object with 'inputs': {_V2_EXAMPLE}")
    outputs = head.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list)
        and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    if not isinstance(head.get("parameters", {}), dict):
        raise BadRequest("'parameters' must be an object")
    offset, kept, moved = length, [], False
    for i, inp in enumerate(head["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise BadRequest(f"{where} must be an object with 'name', 'datatype', 'shape' and data")
        datatype = inp.get("datatype")
        if datatype != "BYTES" and datatype not in DATATYPE_SIZES:
            raise BadRequest(f"{where}: unknown datatype {datatype!r}")
        count = _elements(inp.get("shape"), where)
        params = inp.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"{where}: 'parameters' must be an object")
        size = (params or {}).get("binary_data_size")
        if "data" in inp:
            if size is not None:
                raise BadRequest(f"{where} has both 'data' and binary_data_size")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"{where} needs 'data' or a non-negative integer parameters.binary_data_size")
        raw = body[offset : offset + size]
        if len(raw) < size:
            raise BadRequest(f"{where}: binary_data_size {size} runs past the end of the body")
        offset += size
        if datatype == "BYTES":
            elements = _split_bytes_tensor(raw, count, where)
            assert params is not None
            params.pop("binary_data_size")
            if not params:
                inp.pop("parameters")
            inp["data"] = [_as_text(e) for e in elements]
            moved = True
            continue
        if size != count * DATATYPE_SIZES[datatype]:
            raise BadRequest(
                f"{where}: binary_data_size {size} does not match shape {inp['shape']} of {datatype} "
                f"({count * DATATYPE_SIZES[datatype]} bytes)"
            )
        kept.append(raw)
    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes follow the last binary input: check binary_data_size")
    if not moved:
        return body, length
    new_head = orjson.dumps(head)
    if not kept:
        return new_head, None
    return new_head + b"".join(kept), len(new_head)


def normalise(scope: Scope, body: bytes) -> tuple[Scope, bytes]:
    """The scope and body KServe gets for an inference request: a checked JSON body with
    ``content-type: application/json``, or a checked binary one with ``application/octet-stream``."""
    headers = [(k.lower(), v) for k, v in scope.get("headers", [])]
    first: dict[bytes, bytes] = {}
    for k, v in headers:
        first.setdefault(k, v)
    v2 = scope.get("path", "").startswith("/v2/")
    length: int | None = None
    raw_length = first.get(HEADER_LENGTH)
    if raw_length is not None:
        if not v2:
            raise BadRequest(
                "Inference-Header-Content-Length (the binary tensor extension) is part of the v2 protocol: "
                "send v1 requests as JSON",
                kind="invalid_header",
            )
        body, length = binary_request(body, header_length(raw_length, len(body)))
    else:
        media = first.get(b"content-type", b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        if media == "application/octet-stream":
            raise BadRequest(
                "a binary body needs Inference-Header-Content-Length (the v2 binary tensor extension); "
                "send JSON with no Content-Type or application/json",
                kind="invalid_header",
            )
        parse_json(body)
    kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length", HEADER_LENGTH)]
    kept.append((b"content-length", str(len(body)).encode()))
    if length is None:
        kept.append((b"content-type", b"application/json"))
    else:
        kept += [(b"content-type", b"application/octet-stream"), (HEADER_LENGTH, str(length).encode())]
    return {**scope, "headers": kept}, body


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
