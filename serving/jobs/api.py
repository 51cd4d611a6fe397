"""The transformer's side of the asynchronous path.

A request above the synchronous tile limit is submitted here (one job per image) and answered
``202 Accepted`` with the job ids and ``Location: /jobs/<id>``: the transformer raises
:class:`JobAccepted` from ``preprocess`` to leave KServe's predict/postprocess chain, and the handler
installed by :func:`install_job_routes` turns it into the 202.

``Idempotency-Key`` (header, per client: an issued API key's client, else the peer address, see
:func:`job_client`): a repeated key with the same request returns the same job; with a different
request it is a 422.

``GET /jobs/{id}``: ``{"id", "status": queued | running | done | failed, "attempts", "max_attempts",
"progress": {"tiles_done", "tiles_total"}, "error" (the reason when failed; the last one while a retry
waits), "result": {"url", "format", "width", "height", "bytes"} when done}``. ``GET
/jobs/{id}/result``: the image (from Redis), or a redirect to a presigned S3 URL for large results;
``GET /jobs/{id}/uncertainty``: the per-pixel std PNG of a PNG job with ``samples`` >= 2.
An unknown or expired id is a 404 (results live ``result_ttl_s``), a result asked for too early a 409.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import asdict
from typing import Any

from serving.errors import BadRequest, ServingError, Unavailable, Unprocessable, json_response
from serving.jobs.blobs import REDIS_REF, BlobError
from serving.jobs.store import DONE, FAILED, IdempotencyConflict, JobStore
from serving.middleware import key_digest
from serving.validation import SRInput

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_IDEMPOTENCY_KEY = 200
_CONTENT_TYPES = {"png": "image/png", "geotiff": "image/tiff", "stac": "application/geo+json"}


class JobAccepted(Exception):  # not an error: the 202 leaves KServe's chain this way
    """The request was queued as jobs; answered 202 by the handler of :func:`install_job_routes`."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        super().__init__(", ".join(j["id"] for j in jobs))
        self.jobs = jobs

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "queued", "jobs": self.jobs}
        if len(self.jobs) == 1:
            body |= {"id": self.jobs[0]["id"], "status_url": self.jobs[0]["status_url"]}
        return body


class NotFound(ServingError):
    status, kind = 404, "job_not_found"


class NotDone(ServingError):
    status, kind = 409, "job_not_done"


def job_client(identity: str | None, headers: dict[str, str]) -> str:
    """The namespace of a client's idempotency keys: who the server vouches for (``identity``, from
    :class:`serving.middleware.ClientIdentity`: an issued key's client, else the peer address). A
    self-asserted ``X-Api-Key`` only narrows an address's namespace further (rotating it gains nothing),
    so a client can never reach into another's jobs by sending the other's header."""
    client = identity or "ip:unknown"
    api_key = headers.get("x-api-key")
    if api_key and not client.startswith("client:"):
        client += "|key:" + key_digest(api_key)[:16]
    return client


def submit_request(
    store: JobStore,
    inputs: list[SRInput],
    tiles: list[int],
    headers: dict[str, str],
    request_id: str,
    identity: str | None = None,
) -> JobAccepted:
    """Queue one job per image (blocking: call it in a thread). ``identity`` is the middleware's
    trusted client (:data:`serving.middleware.CURRENT_CLIENT`). Client mistakes are 4xx, a queue that
    cannot be reached a 503."""
    key = headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    jobs = []
    for inp, n_tiles in zip(inputs, tiles, strict=True):
        params = {k: v for k, v in asdict(inp.params).items() if v is not None}
        if params.get("samples") == 1:  # one draw: the job (and its idempotency fingerprint) as before
            del params["samples"]
        image_key = f"{key}#{inp.index}" if key else None
        try:
            submitted = store.submit(
                inp.data,
                params,
                idempotency_key=image_key,
                client=job_client(identity, headers),
                meta={"tiles_planned": n_tiles, "request_id": request_id},
            )
        except IdempotencyConflict as exc:
            raise Unprocessable(
                f"Idempotency-Key {key!r} was used for a different request (job {exc.job_id}); "
                "use a new key for a new request",
                kind="idempotency_conflict",
            ) from exc
        except (BlobError, OSError, _redis_error()) as exc:
            raise Unavailable(
                f"the job queue is unavailable ({type(exc).__name__}: {exc}); retry shortly",
                retry_after=5.0,
                kind="jobs_unavailable",
            ) from exc
        job_id = submitted.id
        jobs.append(
            {
                "id": job_id,
                "index": inp.index,
                "status_url": f"/jobs/{job_id}",
                "duplicate": submitted.outcome == "duplicate",
                "tiles_planned": n_tiles,
            }
        )
        logger.info(
            "request %s: image %d queued as job %s (%d tiles)", request_id, inp.index, job_id, n_tiles
        )
    return JobAccepted(jobs)


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError


def _number(record: dict[str, str], name: str) -> float | None:
    value = record.get(name)
    return float(value) if value not in (None, "") else None


def job_view(record: dict[str, str]) -> dict[str, Any]:
    """The public form of a job record (no tokens, refs or fingerprints)."""
    job_id, status = record["id"], record.get("status", "")
    view: dict[str, Any] = {
        "id": job_id,
        "status": status,
        "attempts": int(record.get("attempts", 0)),
        "max_attempts": int(record.get("max_attempts", 0)),
        "progress": {
            "tiles_done": int(record.get("tiles_done", 0) or 0),
            "tiles_total": int(record.get("tiles_total", 0) or 0),
        },
        "created_at": _number(record, "created"),
        "started_at": _number(record, "started"),
        "finished_at": _number(record, "finished"),
    }
    if record.get("error"):
        view["error"] = record["error"]
        view["error_kind"] = record.get("error_kind", "")
    if record.get("retry_at"):
        view["retry_at"] = _number(record, "retry_at")
    if status == DONE:
        view["result"] = {
            "url": f"/jobs/{job_id}/result",
            "format": record.get("format", ""),
            "width": int(record.get("width", 0)),
            "height": int(record.get("height", 0)),
            "bytes": int(record.get("result_bytes", 0)),
            "model_version": record.get("model_version", ""),
            "seconds": _number(record, "seconds"),
            "stored_in": "s3" if record.get("result", "").startswith("s3://") else "redis",
        }
        if record.get("uncertainty_mean"):  # samples >= 2: the std is a last band or a second PNG
            view["result"]["uncertainty_mean"] = _number(record, "uncertainty_mean")
        if record.get("uncertainty"):
            view["result"]["uncertainty_url"] = f"/jobs/{job_id}/uncertainty"
        if record.get("stac"):  # GeoTIFF results: the STAC Item describing it
            view["result"]["stac_url"] = f"/jobs/{job_id}/stac"
    return view


def _record(store: JobStore, job_id: str) -> dict[str, str]:
    if not JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r}: job ids are the 'id' of a 202 answer")
    try:
        record = store.get(job_id)
    except _redis_error() as exc:
        raise Unavailable(
            f"the job store is unavailable ({exc}); retry shortly", kind="jobs_unavailable"
        ) from exc
    if record is None:
        raise NotFound(
            f"no job {job_id}: unknown, or finished more than {store.config.result_ttl_s:g} s ago "
            "(results expire); submit the image again"
        )
    return record


def install_job_routes(app: Any, store: JobStore) -> None:
    """The 202 handler and ``GET /jobs/{id}[/result]`` on the transformer's FastAPI app."""
    from starlette.responses import RedirectResponse, Response

    async def accepted(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, JobAccepted)
        body = exc.body()
        headers = {"Location": body["status_url"]} if "status_url" in body else None
        return json_response(202, body, headers)

    async def status(job_id: str) -> Any:
        record = await asyncio.to_thread(_record, store, job_id)
        return json_response(200, job_view(record))

    async def output(job_id: str, field: str) -> Any:
        record = await asyncio.to_thread(_record, store, job_id)
        state = record.get("status")
        if state == FAILED:
            raise NotDone(f"job {job_id} failed: {record.get('error', '')}", kind="job_failed")
        if state != DONE:
            raise NotDone(
                f"job {job_id} is {state}; poll GET /jobs/{job_id} until it is done", retry_after=5.0
            )
        ref = record.get(field, "")
        if not ref:
            need = "output_format geotiff" if field == "stac" else "samples >= 2 with PNG output"
            raise NotFound(f"job {job_id} has no {field} output: ask for {need}")
        if not ref.startswith(REDIS_REF):  # large results: straight from S3
            url = await asyncio.to_thread(store.blobs.presigned_url, ref, store.config.result_ttl_s)
            return RedirectResponse(url, status_code=307)
        try:
            data = await asyncio.to_thread(store.blobs.get, ref)
        except BlobError as exc:
            raise NotFound(f"the result of job {job_id} expired; submit the image again") from exc
        fmt = {"uncertainty": "png", "stac": "stac"}.get(field) or record.get("format", "png")
        media = _CONTENT_TYPES.get(fmt, "application/octet-stream")
        return Response(content=data, media_type=media)

    async def result(job_id: str) -> Any:
        return await output(job_id, "result")

    app.add_exception_handler(JobAccepted, accepted)
    app.add_api_route("/jobs/{job_id}", status, methods=["GET"], include_in_schema=False)
    app.add_api_route("/jobs/{job_id}/result", result, methods=["GET"], include_in_schema=False)

    async def uncertainty(job_id: str) -> Any:
        return await output(job_id, "uncertainty")

    app.add_api_route("/jobs/{job_id}/uncertainty", uncertainty, methods=["GET"], include_in_schema=False)

    async def stac(job_id: str) -> Any:
        return await output(job_id, "stac")

    app.add_api_route("/jobs/{job_id}/stac", stac, methods=["GET"], include_in_schema=False)
