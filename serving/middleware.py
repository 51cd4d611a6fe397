"""ASGI middleware in front of KServe's inference routes: admission before any body is read.

For ``POST /v1/models/{name}:predict`` and ``POST /v2/models/{name}/infer``, in this order:

1. model not ready (predictor: the load error) or circuit breaker OPEN -> 503 + Retry-After at once;
2. token bucket of the client (``X-Api-Key``, else the client address) -> 429 + Retry-After;
3. ``Content-Length`` over the body limit -> 413 (nothing read);
4. a processing slot, or a place in the wait queue; queue full -> 503 + Retry-After;
5. the body, read with a hard cap (chunked uploads too) -> 413 past it; on the transformer, a body
   that is not JSON -> 400 with an example of a valid one;

then KServe's handler. Every answer is counted in ``hndsr_requests_total{code}`` and every error in
``hndsr_errors_total{kind}`` (the kind from :mod:`serving.errors`, via ``scope["state"]``). A 503
without ``Retry-After`` (KServe's own "model not ready") gets one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from serving.admission import BreakerState, CircuitBreaker, ConcurrencyGate, RateLimiter
from serving.errors import ERROR_KIND_KEY, BadRequest, CircuitOpen, NotReady, PayloadTooLarge, ServingError
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v1/models/[^/]+:predict$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


@dataclass
class AdmissionPolicy:
    max_body_bytes: int
    metrics: ServingMetrics | None = None
    breaker: CircuitBreaker | None = None
    limiter: RateLimiter | None = None
    gate: ConcurrencyGate | None = None
    json_example: str | None = None  # set: a JSON body must parse, else 400 with this example
    not_ready: Callable[[], str | None] | None = None  # a reason while the model cannot serve


def client_key(scope: Scope) -> str:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    api_key = headers.get("x-api-key")
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k.lower() == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, policy: AdmissionPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not INFER_PATH.match(scope.get("path", ""))
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = {"code": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                if status["code"] in (429, 503):
                    headers = list(message.get("headers", []))
                    if not any(k.lower() == b"retry-after" for k, _ in headers):
                        headers.append((b"retry-after", b"1"))
                        message["headers"] = headers
            await send(message)

        try:
            await self._admit(scope, receive, send_wrapper)
        except ServingError as err:
            state[ERROR_KIND_KEY] = err.kind
            if status["code"] == 0:
                await _send_error(send_wrapper, err)
        finally:
            self._count(status["code"], state)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        p = self.policy
        if p.not_ready is not None and (reason := p.not_ready()):
            raise NotReady(reason, retry_after=10.0)
        if p.breaker is not None and p.breaker.state is BreakerState.OPEN:
            raise CircuitOpen(p.breaker.open_message(), retry_after=max(1.0, p.breaker.retry_after()))
        if p.limiter is not None:
            p.limiter.acquire(client_key(scope))
        length = _content_length(scope)
        if length is not None and length > p.max_body_bytes:
            raise _too_large(length, p.max_body_bytes)
        async with p.gate.slot() if p.gate is not None else _nothing():
            body = await _read_body(receive, p.max_body_bytes)
            if body is None:  # the client went away while waiting
                return
            if p.json_example is not None:
                _check_json(body, p.json_example)
            await self.app(scope, _replay(body, receive), send)

    def _count(self, code: int, state: dict[str, Any]) -> None:
        m = self.policy.metrics
        if m is None or code == 0:
            return
        m.request(code)
        if code >= 400:
            m.error(str(state.get(ERROR_KIND_KEY) or f"http_{code}"))


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body of {size:,} bytes is over the limit of {limit:,} bytes ({limit / 2**20:.0f} MB): "
        "send a "
        "smaller image (or a compressed format such as PNG/JPEG), or use the asynchronous path"
    )


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _check_json(body: bytes, example: str) -> None:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc}); send {example}") from exc


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, err: ServingError) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers().items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
