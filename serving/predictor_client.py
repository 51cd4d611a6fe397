"""The transformer's HTTP client to the predictor: tile batches out, tiles back, every failure a typed
:mod:`serving.errors` error, and which of them count against the circuit breaker.

Its own client rather than KServe's: in this KServe version the stock client decodes every tensor of
the answer into a Python list, and its binary v2 hop sends conflicting content types (400). The wire
format is in :mod:`serving.codec`.
"""

from __future__ import annotations

import httpx
import orjson

from serving.batch_encode import (
    BatchResult,
    TileBatch,
    decode_v1_response,
    decode_v2_response,
    encode_v1,
    encode_v2,
)
from serving.errors import (
    OutputCheckFailed,
    PayloadTooLarge,
    PredictorFailed,
    PredictorTimeout,
    PredictorUnavailable,
    ServingError,
    Unavailable,
    Unprocessable,
)


class PredictorClient:
    """Async HTTP client for tile batches; maps every failure to a typed :mod:`serving.errors` error."""

    def __init__(self, host: str, *, protocol: str, model: str, encoding: str, timeout_s: float) -> None:
        self.base_url = host if host.startswith(("http://", "https://")) else f"http://{host}"
        self.protocol = protocol
        self.model = model
        self.encoding = encoding
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        if self.protocol == "v1":
            return f"{self.base_url}/v1/models/{self.model}:predict"
        return f"{self.base_url}/v2/models/{self.model}/infer"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                transport=httpx.AsyncHTTPTransport(retries=1),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ready(self) -> bool:
        """The predictor's model readiness (its own breaker included), False when unreachable."""
        try:
            r = await self._http().get(f"{self.base_url}/v2/models/{self.model}/ready", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def infer(self, batch: TileBatch) -> BatchResult:
        if self.protocol == "v1":
            body, headers = encode_v1(batch)
        else:
            body, headers = encode_v2(batch, self.encoding)
        try:
            response = await self._http().post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise PredictorTimeout(
                f"the predictor at {self.base_url} did not answer within {self.timeout_s:g} s; retry with a "
                "smaller image or fewer steps"
            ) from exc
        except httpx.HTTPError as exc:  # connect refused, reset, protocol errors: the predictor is gone
            raise PredictorUnavailable(
                f"the predictor at {self.base_url} is unreachable ({type(exc).__name__}); retry shortly",
                retry_after=2.0,
            ) from exc
        if response.status_code != 200:
            raise self._error(response)
        if self.protocol == "v1":
            return decode_v1_response(response.content)
        return decode_v2_response(response.content, response.headers)

    def _error(self, response: httpx.Response) -> ServingError:
        try:
            doc = orjson.loads(response.content)
            message, kind = str(doc.get("error", "")), str(doc.get("kind", ""))
        except (orjson.JSONDecodeError, AttributeError):
            message, kind = response.text[:300], ""
        code = response.status_code
        if code == 503:
            retry = retry_after_seconds(response.headers.get("retry-after"))
            return Unavailable(
                f"predictor unavailable: {message}", retry_after=retry, kind=kind or "predictor_unavailable"
            )
        if code == 500 and kind == "output_check":
            return OutputCheckFailed(message)
        if code == 413:
            return PayloadTooLarge(f"the predictor refused the tile batch as too large: {message}")
        if code == 422:  # the values the client sent (e.g. image_not_processable): the client's to fix
            return Unprocessable(message, kind=kind or "unprocessable")
        err = PredictorFailed(f"the predictor answered {code}: {message}", kind="predictor_error")
        if code < 500:  # it answered, so it is up: a refused batch says nothing about its health
            err.breaker_neutral = True
        return err


def retry_after_seconds(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def breaker_counts(err: ServingError) -> bool:
    """Failures that say the predictor is unhealthy (not: it is busy, or the input was refused)."""
    if err.kind == "queue_full" or err.breaker_neutral:
        return False
    return err.status >= 500
