"""ASGI middleware in front of KServe's inference routes: admission before any body is read.

For ``POST /v1/models/{name}:predict`` and ``POST /v2/models/{name}/infer``, in this order:

1. model not ready (predictor: the load error) or circuit breaker OPEN -> 503 + Retry-After at once;
2. token bucket of the client -> 429 + Retry-After. The client is who the server can vouch for
   (:class:`ClientIdentity`): the name of an API key it issued (``--api-keys-file``; a key it did not
   issue is 401), else the peer address, or a proxy's client-address header when the peer is a
   configured trusted proxy. A self-asserted ``X-Api-Key`` never names a bucket: rotating keys would
   bypass the limit;
3. ``Content-Length`` over the body limit -> 413 (nothing read);
4. a processing slot, or a place in the wait queue; refused (503 ``queue_full`` + Retry-After) when
   the queue is full or when the expected wait at the measured drain rate is too long
   (:class:`serving.concurrency.ConcurrencyGate`);
5. the body, read with a hard cap (chunked uploads too) -> 413 past it; on the transformer, a body
   that is not JSON -> 400 with an example of a valid one;

then KServe's handler. Every answer is counted in ``hndsr_requests_total{code}`` and every error in
``hndsr_errors_total{kind}`` (the kind from :mod:`serving.errors`, via ``scope["state"]``). A 503
without ``Retry-After`` (KServe's own "model not ready") gets one.
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from serving.breaker import BreakerProbe, BreakerState, CircuitBreaker
from serving.concurrency import ConcurrencyGate, Ticket
from serving.errors import (
    ERROR_KIND_KEY,
    BadRequest,
    CircuitOpen,
    NotReady,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
)
from serving.metrics import MODEL_VERSION_KEY, ServingMetrics
from serving.rate_limit import RateLimiter

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"^/v1/models/[^/]+:predict$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


# The admission ticket of the request being handled (serving.concurrency.Ticket): the model sets its
# size and progress, the gate learns the drain rate from it.
CURRENT_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("hndsr_ticket", default=None)
# Who the request being handled is (ClientIdentity): the rate-limit bucket, the admission gate's turns
# and the namespace of the job API's idempotency keys all go by it, never by a self-asserted header.
CURRENT_CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("hndsr_client", default=None)
# The scope["state"] of the inference request being handled: the model writes what the metrics
# middleware labels the request with (MODEL_VERSION_KEY: the model that answered).
REQUEST_STATE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "hndsr_request_state", default=None
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ClientIdentity:
    """Who a request is, for rate limiting: only what the server can vouch for.

    - ``api_keys`` (key -> client name, from ``--api-keys-file``): a known ``X-Api-Key`` is that
      client; an unknown one is 401; none is the peer address. Keys are compared by their sha256.
    - ``ip_header`` (e.g. ``X-Forwarded-For``, ``X-Real-IP``): the client address a proxy in front
      reports, believed only when the peer is in ``trusted_proxies``; in a list (``X-Forwarded-For``)
      the rightmost address that is not a trusted proxy (what a client wrote to its left is a claim).
    - otherwise the peer address. The servers start uvicorn trusting no proxy header itself
      (``FORWARDED_ALLOW_IPS`` unset -> none), so the peer is the TCP peer.

    Without ``api_keys`` an ``X-Api-Key`` is ignored: a self-asserted key names no bucket.
    """

    api_keys: dict[str, str] | None = None  # sha256(key) -> client name
    ip_header: str | None = None
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def create(
        cls,
        keys: dict[str, str] | None = None,
        ip_header: str | None = None,
        trusted_proxies: str | list[str] = "127.0.0.1/32,::1/128",
    ) -> ClientIdentity:
        hashed = {key_digest(k): name for k, name in keys.items()} if keys is not None else None
        if isinstance(trusted_proxies, str):
            trusted_proxies = [p for p in trusted_proxies.split(",") if p.strip()]
        networks = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies)
        return cls(hashed, ip_header.lower() if ip_header else None, networks)

    def __call__(self, scope: Scope) -> str:
        headers = _headers(scope)
        api_key = headers.get("x-api-key")
        if self.api_keys is not None and api_key:
            name = self.api_keys.get(key_digest(api_key))
            if name is None:
                raise Unauthorized(
                    "unknown X-Api-Key: use a key this service issued (or send none, to be limited by "
                    "your address)"
                )
            return f"client:{name}"
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        if self.ip_header and self._trusted(peer):
            # From the nearest hop outwards, the first address that is not a trusted proxy: whatever a
            # client wrote further left is its own claim.
            hops = [h.strip() for h in headers.get(self.ip_header, "").split(",") if h.strip()]
            for hop in reversed(hops):
                if not self._trusted(hop):
                    return f"ip:{hop}"
            if hops:
                return f"ip:{hops[0]}"
        return f"ip:{peer}"

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_proxies)


def read_api_keys(path: str) -> dict[str, str]:
    """An API-key file: a JSON object ``{"<key>": "<client name>"}``, or lines ``<key> <client name>``
    (``#`` comments and blank lines skipped). Raises ValueError on a malformed file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        doc = orjson.loads(text)
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            raise ValueError(f"{path}: expected a JSON object of key -> client name")
        keys = {str(k): v for k, v in doc.items()}
    else:
        keys = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<key> <client name>'")
            keys[parts[0]] = parts[1].strip()
    if any(len(k) < 16 for k in keys):
        raise ValueError(f"{path}: API keys must be at least 16 characters (random, not guessable)")
    return keys


def key_digest(key: str) -> str:
    """The one hash of an API key (issued keys are kept and compared by it; the job API's namespaces)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


@dataclass
class AdmissionPolicy:
    max_body_bytes: int
    metrics: ServingMetrics | None = None
    breaker: CircuitBreaker | None = None
    limiter: RateLimiter | None = None
    gate: ConcurrencyGate | None = None
    json_example: str | None = None  # set: a JSON body must parse, else 400 with this example
    not_ready: Callable[[], str | None] | None = None  # a reason while the model cannot serve
    identity: ClientIdentity | None = None  # default: the peer address
    probe: BreakerProbe | None = None  # kicked whenever a request finds the breaker open


def client_key(scope: Scope, identity: ClientIdentity | None = None) -> str:
    return (identity or ClientIdentity())(scope)


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
        state_token = REQUEST_STATE.set(state)
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
            REQUEST_STATE.reset(state_token)
            self._count(status["code"], state)

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        p = self.policy
        if p.not_ready is not None and (reason := p.not_ready()):
            raise NotReady(reason, retry_after=10.0)
        if p.breaker is not None and p.breaker.state is BreakerState.OPEN:
            if p.probe is not None:
                p.probe.kick()
            raise CircuitOpen(p.breaker.open_message(), retry_after=_open_retry_after(p))
        client = client_key(scope, p.identity)  # an unknown issued-key is 401 here, rate limit or not
        if p.limiter is not None:
            p.limiter.acquire(client)
        length = _content_length(scope)
        if length is not None and length > p.max_body_bytes:
            raise _too_large(length, p.max_body_bytes)
        client_token = CURRENT_CLIENT.set(client)
        try:
            if p.gate is None:
                await self._handle(scope, receive, send)
                return
            async with p.gate.slot(client) as ticket:
                token = CURRENT_TICKET.set(ticket)
                try:
                    code = await self._handle(scope, receive, send)
                finally:
                    CURRENT_TICKET.reset(token)
                ticket.ok = code == 200
        finally:
            CURRENT_CLIENT.reset(client_token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The body (capped), then KServe's handler; returns the status sent (0: none)."""
        p = self.policy
        body = await _read_body(receive, p.max_body_bytes)
        if body is None:  # the client went away while waiting
            return 0
        if p.json_example is not None:
            _check_json(body, p.json_example)
        sent = {"code": 0}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["code"] = int(message["status"])
            await send(message)

        await self.app(scope, replay_body(body, receive), watch)
        return sent["code"]

    def _count(self, code: int, state: dict[str, Any]) -> None:
        m = self.policy.metrics
        if m is None or code == 0:
            return
        version = state.get(MODEL_VERSION_KEY)
        m.request(code, version)
        if code >= 400:
            m.error(str(state.get(ERROR_KIND_KEY) or f"http_{code}"), version)


def _open_retry_after(p: AdmissionPolicy) -> float:
    """An OPEN breaker with a readiness probe closes within a probe interval of the service being
    ready: come back then, not after the blind-trial window."""
    assert p.breaker is not None
    if p.probe is not None:
        return max(1.0, p.probe.interval_s, p.breaker.probe_hold())
    return max(1.0, p.breaker.retry_after())


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


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the client's further messages."""
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
