"""Inference request bodies, checked before KServe reads them (:class:`serving.protocol.ProtocolMiddleware`).

For ``POST /v1/models/{m}:predict`` and ``POST /v2/models/{m}/infer`` a body is JSON unless it carries
``Inference-Header-Content-Length`` (the v2 binary tensor extension). The JSON needs no ``Content-Type``
(tritonclient sends none); any JSON media type is accepted in any case and with parameters
(``application/json; charset=utf-8``); it must parse (strictly: no NaN) and nest at most
:data:`MAX_JSON_DEPTH` deep. A binary request's header length must be a plain decimal within the body,
its JSON head must parse and every binary input's ``binary_data_size`` must match its shape and
datatype, byte for byte, before KServe reads it. BYTES inputs are handed on as JSON strings: base64 text
as it is, anything else (an image file itself) base64-encoded — so a stock client can send the file's
bytes. Anything else is a 400 with what to send.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import orjson

from serving.errors import BadRequest
from serving.middleware import Scope

HEADER_LENGTH = b"inference-header-content-length"
MAX_JSON_DEPTH = 64
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
_V2_EXAMPLE = (
    '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}], '
    '"parameters": {"scale": 4}}'
)


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
