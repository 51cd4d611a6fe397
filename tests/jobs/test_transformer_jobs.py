"""The asynchronous path through a real transformer: 202 + job id, GET /jobs/{id}, the result, the
idempotency key, and a clear 413 where no Redis is configured."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from jobstack import fresh_config, worker
from servingstack import b64, free_port, png_bytes, tiny_model, transformer, write_checkpoint

from hndsr.image_read import read_image_bytes
from hndsr.image_write import encode_image
from hndsr.inference import Upscaler, upscale_raster
from serving.errors import PayloadTooLarge
from serving.transformer import HNDSRTransformer
from serving.transformer_settings import TransformerSettings


def test_over_the_tile_limit_without_redis_is_a_413_that_says_what_to_do() -> None:
    model = HNDSRTransformer("hndsr", TransformerSettings(max_sync_tiles=0))
    payload = {"instances": [{"image_b64": b64(png_bytes(16, 16)), "scale": 4}]}
    with pytest.raises(PayloadTooLarge, match="--redis-url") as err:
        asyncio.run(model.preprocess(payload, {}))
    assert err.value.status == 413 and err.value.kind == "too_many_tiles"


def test_large_requests_become_jobs_with_status_and_result(
    redis_server,
    tmp_path: Path,
) -> None:
    config = fresh_config(redis_server.url, namespace="hndsr:jobs")  # the transformer's namespace
    nowhere = f"http://127.0.0.1:{free_port()}"  # the asynchronous path never calls the predictor
    server = transformer(
        tmp_path, nowhere, "--redis-url", config.redis_url, "--max-sync-tiles", "0", "--rate-limit-rps", "0"
    )
    job_worker = worker(config, write_checkpoint(tmp_path / "tiny"), tmp_path / "worker.log")
    server.start(ready_path="/v2/health/live")
    try:
        image = png_bytes(40, 48, seed=2)
        body = {"instances": [{"image_b64": b64(image), "scale": 4, "steps": 0}]}
        http = httpx.Client(base_url=server.url, timeout=30)
        r = http.post("/v1/models/hndsr:predict", json=body, headers={"Idempotency-Key": "scene-1"})
        assert r.status_code == 202, r.text
        accepted = r.json()
        job_id = accepted["id"]
        assert r.headers["location"] == f"/jobs/{job_id}" == accepted["status_url"]
        assert accepted["jobs"][0]["duplicate"] is False and len(job_id) >= 24

        # No worker yet: queued, and the result is not there.
        status = http.get(f"/jobs/{job_id}").json()
        assert status["status"] == "queued" and status["attempts"] == 0
        early = http.get(f"/jobs/{job_id}/result")
        assert early.status_code == 409 and "poll GET /jobs/" in early.json()["error"]

        # The same key and request: the same job; the same key and another request: 422.
        again = http.post("/v1/models/hndsr:predict", json=body, headers={"Idempotency-Key": "scene-1"})
        assert (
            again.status_code == 202 and again.json()["id"] == job_id and again.json()["jobs"][0]["duplicate"]
        )
        other = {"instances": [{"image_b64": b64(image), "scale": 3}]}
        clash = http.post("/v1/models/hndsr:predict", json=other, headers={"Idempotency-Key": "scene-1"})
        assert clash.status_code == 422 and clash.json()["kind"] == "idempotency_conflict"

        v2 = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(image)]}],
            "parameters": {"scale": 2, "steps": 0, "output_format": "geotiff"},
        }
        r2 = http.post("/v2/models/hndsr/infer", json=v2)
        assert r2.status_code == 202, r2.text
        v2_id = r2.json()["id"]

        job_worker.start()
        deadline = time.monotonic() + 120
        while (status := http.get(f"/jobs/{job_id}").json())["status"] != "done":
            assert status["status"] in ("queued", "running"), status
            assert time.monotonic() < deadline, job_worker.log_tail()
            time.sleep(0.2)
        assert status["attempts"] == 1 and status["result"]["url"] == f"/jobs/{job_id}/result"
        assert (status["result"]["width"], status["result"]["height"]) == (192, 160)
        assert status["progress"]["tiles_done"] == status["progress"]["tiles_total"] >= 1
        result = http.get(status["result"]["url"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        engine = Upscaler(tiny_model(), device="cpu")
        expected = encode_image(
            upscale_raster(engine, read_image_bytes(image), scale=4.0, steps=0), "png", png_level=1
        )
        assert read_image_bytes(result.content).data.shape == read_image_bytes(expected).data.shape
        assert (
            abs(read_image_bytes(result.content).data - read_image_bytes(expected).data).max()
            <= 1 / 255 + 1e-6
        )

        deadline = time.monotonic() + 120
        while (v2_status := http.get(f"/jobs/{v2_id}").json())["status"] != "done":
            assert time.monotonic() < deadline, job_worker.log_tail()
            time.sleep(0.2)
        assert (v2_status["result"]["width"], v2_status["result"]["height"]) == (96, 80)
        # A GeoTIFF result links its STAC Item (the worker's checkpoint named in it); a PNG has none.
        item = http.get(v2_status["result"]["stac_url"])
        assert item.status_code == 200 and item.headers["content-type"] == "application/geo+json"
        sha = json.loads((tmp_path / "tiny" / "config.json").read_text())["sha256"]
        assert item.json()["id"] == v2_id and item.json()["properties"]["hndsr:checkpoint_sha256"] == sha
        no_item = http.get(f"/jobs/{job_id}/stac")
        assert no_item.status_code == 404 and "output_format geotiff" in no_item.json()["error"]

        unknown = http.get("/jobs/AAAAAAAAAAAAAAAAAAAAAAAA")
        assert unknown.status_code == 404 and "results expire" in unknown.json()["error"]
        assert http.get("/jobs/..%2Fetc").status_code == 404
    finally:
        job_worker.stop()
        server.stop()


def test_idempotency_keys_are_per_trusted_client_not_per_asserted_header(
    redis_server,
    tmp_path: Path,
) -> None:
    """The idempotency namespace used to be the self-asserted X-Api-Key ("anonymous" without one): a
    client sending another's header, or none, met the other's jobs (their ids, even, in a 422). Now it
    is who the server vouches for: the peer address (a self-asserted key only narrows it), or an issued
    key's client; an unknown key is 401."""
    config = fresh_config(redis_server.url, namespace="hndsr:jobs")
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ("--redis-url", config.redis_url, "--max-sync-tiles", "0", "--rate-limit-rps", "0")
    image = png_bytes(40, 48, seed=3)
    body = {"instances": [{"image_b64": b64(image), "scale": 4, "steps": 0}]}
    other = {"instances": [{"image_b64": b64(image), "scale": 3, "steps": 0}]}

    def submit(
        url: str, request: dict[str, object], source: str = "127.0.0.1", **headers: str
    ) -> httpx.Response:
        transport = httpx.HTTPTransport(local_address=source)  # another loopback address: another peer
        with httpx.Client(base_url=url, timeout=30, transport=transport) as http:
            return http.post(
                "/v1/models/hndsr:predict", json=request, headers={"Idempotency-Key": "scene-9"} | headers
            )

    server = transformer(tmp_path, nowhere, *args, name="open-jobs")
    server.start(ready_path="/v2/health/live")
    try:
        first = submit(server.url, body, **{"x-api-key": "k-alice-self-asserted"})
        assert first.status_code == 202, first.text
        job = first.json()["id"]
        assert submit(server.url, body, **{"x-api-key": "k-alice-self-asserted"}).json()["id"] == job
        # The same header from another address: another client, a job of its own (not the first's id).
        elsewhere = submit(server.url, body, source="127.0.0.2", **{"x-api-key": "k-alice-self-asserted"})
        assert elsewhere.status_code == 202 and elsewhere.json()["id"] != job
        assert elsewhere.json()["jobs"][0]["duplicate"] is False
        # Another header, or none, from the same address: no collision, so no 422 naming the first job.
        for headers in ({"x-api-key": "k-bob-self-asserted"}, {}):
            r = submit(server.url, other, **headers)
            assert r.status_code == 202 and r.json()["id"] != job and job not in r.text, r.text
    finally:
        server.stop()

    keys = tmp_path / "keys.txt"
    keys.write_text("k-team-a-8f3e2b7c41d09a65 team-a\nk-team-b-0c9d8e7f6a5b4c3d team-b\n")
    server = transformer(tmp_path, nowhere, *args, "--api-keys-file", str(keys), name="keyed-jobs")
    server.start(ready_path="/v2/health/live")
    try:
        a = submit(server.url, body, **{"x-api-key": "k-team-a-8f3e2b7c41d09a65"})
        assert a.status_code == 202, a.text
        # An issued key is its client wherever it comes from: the same job again.
        again = submit(server.url, body, source="127.0.0.3", **{"x-api-key": "k-team-a-8f3e2b7c41d09a65"})
        assert again.json()["id"] == a.json()["id"] and again.json()["jobs"][0]["duplicate"] is True
        b = submit(server.url, other, **{"x-api-key": "k-team-b-0c9d8e7f6a5b4c3d"})
        assert b.status_code == 202 and b.json()["id"] != a.json()["id"]
        unknown = submit(server.url, body, **{"x-api-key": "k-made-up-0000000000"})
        assert unknown.status_code == 401 and unknown.json()["kind"] == "unauthorized"
        assert "unknown X-Api-Key" in unknown.json()["error"] and a.json()["id"] not in unknown.text
    finally:
        server.stop()
