"""The job store and an in-process worker against a real Redis (and SeaweedFS for the S3 path)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from jobstack import fresh_config
from PIL import Image
from servingstack import png_bytes, tiny_model

from hndsr.image_read import read_image_bytes
from hndsr.image_write import encode_image
from hndsr.inference import Upscaler, upscale_raster
from lake.server import EmbeddedS3
from serving.jobs.api import NotFound, _record, job_view
from serving.jobs.store import DONE, FAILED, QUEUED, IdempotencyConflict, JobConfig, JobStore
from serving.worker import Worker, WorkerSettings

PARAMS = {"scale": 4.0, "seed": 0, "steps": 0, "output_format": "png"}


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(tiny_model(), device="cpu", tile=128)


def make_worker(store: JobStore, upscaler: Upscaler) -> Worker:
    return Worker(store, upscaler, WorkerSettings(http_port=None, tile=128), model_version="tiny")


def engine_png(upscaler: Upscaler, data: bytes, params: dict[str, object]) -> bytes:
    """What `hndsr sr` would write: the in-process engine and the core's encoder."""
    raster = upscale_raster(upscaler, read_image_bytes(data), scale=float(params["scale"]), steps=0)  # type: ignore[arg-type]
    return encode_image(raster, "png", png_level=1)


def promote_when_due(store: JobStore) -> None:
    """Run the reaper until the backed-off retry is back in the queue."""
    deadline = time.monotonic() + 10
    while store.reap()[2] == 0:
        assert time.monotonic() < deadline, "the retry was never promoted"
        time.sleep(0.05)


def test_enqueue_runs_to_done_with_the_engines_result(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url))
    data = png_bytes(40, 56, seed=3)
    job_id = store.submit(data, PARAMS).id
    assert store.get(job_id)["status"] == QUEUED
    assert store.counts()["queued"] == 1

    assert make_worker(store, upscaler).run_once(block_s=1.0) == "done"

    record = store.get(job_id)
    assert record is not None and record["status"] == DONE
    view = job_view(record)
    assert view["attempts"] == 1 and view["progress"]["tiles_done"] == view["progress"]["tiles_total"] > 1
    assert view["result"]["width"] == 224 and view["result"]["height"] == 160
    assert view["result"]["stored_in"] == "redis"
    result = store.blobs.get(record["result"])
    assert result == engine_png(upscaler, data, PARAMS)
    assert np.asarray(Image.open(io.BytesIO(result))).shape == (160, 224, 3)
    counts = store.counts()
    assert (counts["queued"], counts["processing"], counts["dead"], counts["completed"]) == (0, 0, 0, 1)
    assert store.redis.exists(store.key("input", job_id)) == 0  # the input goes once the result is in


def test_idempotency_key_returns_the_same_job_and_refuses_another_request(redis_server) -> None:
    store = JobStore(fresh_config(redis_server.url))
    data = png_bytes(16, 16)
    first = store.submit(data, PARAMS, idempotency_key="scene-7", client="team-a")
    again = store.submit(data, PARAMS, idempotency_key="scene-7", client="team-a")
    assert (again.id, again.outcome) == (first.id, "duplicate")
    assert store.submit(data, PARAMS, idempotency_key="scene-7", client="team-b").id != first.id  # per client
    with pytest.raises(IdempotencyConflict) as err:
        store.submit(data, PARAMS | {"scale": 2.0}, idempotency_key="scene-7", client="team-a")
    assert err.value.job_id == first.id
    assert store.counts()["queued"] == 2


def test_poison_input_goes_to_the_dead_letter_queue_with_its_reason(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url, max_attempts=3))
    two_bands = png_bytes(16, 16, mode="LA")  # the engine needs R, G, B: retrying cannot help
    job_id = store.submit(two_bands, PARAMS).id

    assert make_worker(store, upscaler).run_once(block_s=1.0) == "dead"

    record = store.get(job_id)
    assert record is not None and record["status"] == FAILED
    assert record["attempts"] == "1"  # permanent: not retried
    assert "needs at least 3 bands" in record["error"] and record["error_kind"] == "InputError"
    assert store.dead_letters() == [job_id]
    assert store.counts()["dead"] == 1 and store.counts()["processing"] == 0
    assert store.redis.ttl(store.key("job", job_id)) > store.config.result_ttl_s  # kept for inspection


def test_transient_failures_retry_with_backoff_then_dead_letter(redis_server, upscaler) -> None:
    config = fresh_config(redis_server.url, max_attempts=3, backoff_s=0.3)
    store = JobStore(config)
    job_id = store.submit(png_bytes(16, 16), PARAMS).id
    store.redis.delete(
        store.key("input", job_id)
    )  # storage lost the input: an error of ours, not the client's
    worker = make_worker(store, upscaler)
    delays = []
    for attempt in (1, 2):
        assert worker.run_once(block_s=1.0) == "retry"
        record = store.get(job_id)
        assert record is not None and record["status"] == QUEUED and record["attempts"] == str(attempt)
        assert "is gone" in record["error"]
        delays.append(float(record["retry_at"]) - store.now())
        assert worker.run_once(block_s=0.1) is None  # still backing off: not in the queue
        promote_when_due(store)
    assert 0.15 < delays[0] <= 0.3 and 0.45 < delays[1] <= 0.6  # 0.3 s, then 0.6 s
    assert worker.run_once(block_s=1.0) == "dead"
    record = store.get(job_id)
    assert record is not None and record["status"] == FAILED and record["attempts"] == "3"
    assert "is gone" in record["error"] and record["error_kind"] == "BlobError"
    assert store.dead_letters() == [job_id]


def test_results_expire_after_their_ttl(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url, result_ttl_s=1.0))
    job_id = store.submit(png_bytes(16, 16), PARAMS).id
    assert make_worker(store, upscaler).run_once(block_s=1.0) == "done"
    ref = store.get(job_id)["result"]  # type: ignore[index]
    assert store.blobs.get(ref)
    time.sleep(1.6)
    assert store.get(job_id) is None
    assert store.redis.exists(ref.removeprefix("redis:")) == 0
    with pytest.raises(NotFound, match="results expire"):
        _record(store, job_id)


def test_a_lost_lease_is_run_again_and_the_late_result_refused(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url, visibility_timeout_s=0.5))
    job_id = store.submit(png_bytes(16, 16), PARAMS).id
    stalled = store.claim("stalled", block_s=1.0)  # takes the job, then never heartbeats
    assert stalled is not None and stalled.attempt == 1
    time.sleep(0.7)
    assert store.reap()[0] == 1
    record = store.get(job_id)
    assert record is not None and record["status"] == QUEUED and record["error_kind"] == "worker_lost"
    promote_when_due(store)
    assert make_worker(store, upscaler).run_once(block_s=1.0) == "done"
    late = store.store_result(stalled, b"late", "png")
    assert store.complete(stalled, late, {}) is False  # fenced: the job completes once
    assert store.redis.exists(late.removeprefix("redis:")) == 0
    record = store.get(job_id)
    assert record is not None and (record["attempts"], record["completions"]) == ("2", "1")


def test_a_job_taken_by_a_worker_that_died_before_its_lease_is_recovered(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url, visibility_timeout_s=0.5))
    job_id = store.submit(png_bytes(16, 16), PARAMS).id
    # BLMOVE happened, the claim script never ran: the id sits in processing with no lease.
    store.redis.lmove(store.key("queue"), store.key("processing"), "RIGHT", "LEFT")
    store.reap()  # grants it a lease ...
    time.sleep(0.7)
    assert store.reap()[0] == 1  # ... which expires like any other
    promote_when_due(store)
    assert make_worker(store, upscaler).run_once(block_s=1.0) == "done"
    assert store.get(job_id)["status"] == DONE  # type: ignore[index]


def test_large_inputs_and_results_go_to_s3_and_are_swept(
    redis_server,
    s3_server: EmbeddedS3,
    upscaler,
    tmp_path: Path,
) -> None:
    config: JobConfig = fresh_config(
        redis_server.url, inline_max_bytes=512, result_ttl_s=5.0, s3_prefix="s3://hndsr/jobs-test"
    )
    store = JobStore(config, s3_settings=s3_server.settings)
    blobs = store.blobs
    data = png_bytes(48, 48, seed=5)
    assert len(data) > 512
    job_id = store.submit(data, PARAMS).id
    input_ref = store.get(job_id)["input"]  # type: ignore[index]
    assert input_ref == f"s3://hndsr/jobs-test/{job_id}/input"
    assert store.redis.exists(store.key("input", job_id)) == 0

    worker = make_worker(store, upscaler)
    assert worker.run_once(block_s=1.0) == "done"
    record = store.get(job_id)
    assert record is not None and record["result"].startswith(f"s3://hndsr/jobs-test/{job_id}/result-")
    assert job_view(record)["result"]["stored_in"] == "s3"
    assert blobs.get(record["result"]) == engine_png(upscaler, data, PARAMS)
    url = blobs.presigned_url(record["result"], 60)
    assert url.startswith(s3_server.endpoint) and "X-Amz-Signature" in url

    client = s3_server.settings.client()

    def names() -> list[str]:
        objects = client.list_objects("hndsr", prefix=f"jobs-test/{job_id}/", recursive=True)
        return sorted(o.object_name for o in objects)

    worker._tick()  # maintenance: the consumed input is swept at once
    assert names() == [record["result"].removeprefix("s3://hndsr/")]
    expires_at = store.redis.zscore(blobs.expiry_key, record["result"])
    time.sleep(max(0.0, expires_at - store.now()) + 0.2)
    worker._tick()  # the result after its TTL
    assert names() == []


def test_an_output_too_large_for_the_worker_is_refused_before_rendering(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url))
    job_id = store.submit(png_bytes(64, 64), PARAMS).id
    settings = WorkerSettings(http_port=None, tile=128, max_output_pixels=200 * 200)
    assert Worker(store, upscaler, settings).run_once(block_s=1.0) == "dead"
    record = store.get(job_id)
    assert record is not None and record["attempts"] == "1" and record["tiles_done"] == "0"
    assert "256x256 = 0.1 MP, over this worker's limit" in record["error"]
    assert "--max-output-mp" in record["error"]


def test_a_stopping_worker_hands_its_job_back_without_spending_an_attempt(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url))
    first = store.submit(png_bytes(32, 32, seed=1), PARAMS).id
    second = store.submit(png_bytes(32, 32, seed=2), PARAMS).id
    worker = make_worker(store, upscaler)
    worker.stop.set()  # SIGTERM: the first progress callback stops the job
    assert worker.run_once(block_s=1.0) == "released"
    record = store.get(first)
    assert record is not None and (record["status"], record["attempts"]) == (QUEUED, "0")
    assert "token" not in record and store.counts()["processing"] == 0
    worker.stop.clear()
    assert worker.run_once(block_s=1.0) == "done" and store.get(first)["status"] == DONE  # type: ignore[index]
    assert store.get(second)["status"] == QUEUED  # type: ignore[index]  # the handed-back job went first


GEOTIFF = {**PARAMS, "output_format": "geotiff"}


def _pixels(data: bytes) -> np.ndarray:
    return read_image_bytes(data).data


def test_geotiff_results_are_streamed_from_a_scratch_file_to_s3(
    redis_server,
    s3_server: EmbeddedS3,
    upscaler,
    tmp_path: Path,
) -> None:
    config = fresh_config(redis_server.url, inline_max_bytes=512, s3_prefix="s3://hndsr/jobs-test")
    store = JobStore(config, s3_settings=s3_server.settings)
    data = png_bytes(72, 40, seed=6)  # 288 x 160 output: 3 rows of 128 px tiles
    job_id = store.submit(data, GEOTIFF).id
    settings = WorkerSettings(http_port=None, tile=128, max_output_pixels=100, scratch_dir=str(tmp_path))
    assert Worker(store, upscaler, settings).run_once(block_s=1.0) == "done"  # PNG limit does not apply
    record = store.get(job_id)
    assert record is not None and record["result"].startswith("s3://") and record["format"] == "geotiff"
    result = store.blobs.get(record["result"])
    assert int(record["result_bytes"]) == len(result)
    expected = upscale_raster(upscaler, read_image_bytes(data), scale=4.0, steps=0)
    assert np.array_equal(_pixels(result), _pixels(encode_image(expected, "geotiff")))
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone
    assert _is_cog(result, tmp_path / "check")


def _is_cog(data: bytes, path: Path) -> bool:
    from hndsr.cog import is_cog

    path.write_bytes(data)
    return is_cog(path)


def test_geotiff_job_with_cog_false_is_a_plain_geotiff(redis_server, upscaler, tmp_path: Path) -> None:
    store = JobStore(fresh_config(redis_server.url))
    data = png_bytes(40, 36, seed=8)
    cog_job = store.submit(data, GEOTIFF).id
    plain_job = store.submit(data, {**GEOTIFF, "cog": False}).id
    settings = WorkerSettings(http_port=None, tile=128, scratch_dir=str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    worker = Worker(store, upscaler, settings)
    assert worker.run_once(block_s=1.0) == worker.run_once(block_s=1.0) == "done"
    cog, plain = (store.blobs.get(store.get(j)["result"]) for j in (cog_job, plain_job))  # type: ignore[index]
    assert _is_cog(cog, tmp_path / "cog.tif") and not _is_cog(plain, tmp_path / "plain.tif")
    assert np.array_equal(_pixels(cog), _pixels(plain))


def test_streamed_geotiff_has_its_own_limit_and_png_refusal_points_to_it(redis_server, upscaler) -> None:
    store = JobStore(fresh_config(redis_server.url))
    tif = store.submit(png_bytes(64, 64), GEOTIFF).id
    png = store.submit(png_bytes(64, 64, seed=2), PARAMS).id
    settings = WorkerSettings(
        http_port=None, tile=128, max_output_pixels=200 * 200, max_stream_output_pixels=200 * 200
    )
    worker = Worker(store, upscaler, settings)
    assert worker.run_once(block_s=1.0) == "dead" and worker.run_once(block_s=1.0) == "dead"
    tif_error, png_error = store.get(tif)["error"], store.get(png)["error"]  # type: ignore[index]
    assert "streamed GeoTIFF" in tif_error and "--max-stream-output-mp" in tif_error
    assert "PNG results are rendered in memory" in png_error and "geotiff" in png_error


def test_a_geotiff_result_links_its_stac_item(redis_server, upscaler, tmp_path: Path) -> None:
    """The worker stores a valid STAC Item beside each GeoTIFF result; the job's view links it, and a
    PNG job has none."""
    import json

    from hndsr.stac_items import validate_core

    store = JobStore(fresh_config(redis_server.url))
    tif = store.submit(png_bytes(40, 36, seed=9), {**GEOTIFF, "seed": 5}).id
    png = store.submit(png_bytes(40, 36, seed=9), PARAMS).id
    settings = WorkerSettings(http_port=None, tile=128, scratch_dir=str(tmp_path))
    worker = Worker(store, upscaler, settings, model_version="tiny", checkpoint_sha256="ab" * 32)
    assert worker.run_once(block_s=1.0) == worker.run_once(block_s=1.0) == "done"

    record = store.get(tif)
    assert record is not None and job_view(record)["result"]["stac_url"] == f"/jobs/{tif}/stac"
    item = json.loads(store.blobs.get(record["stac"]))
    validate_core(item, name="the job's Item")
    assert item["id"] == tif and item["assets"]["data"]["href"] == f"/jobs/{tif}/result"
    props = item["properties"]
    assert props["hndsr:checkpoint_sha256"] == "ab" * 32 and props["hndsr:model_version"] == "tiny"
    assert (props["hndsr:scale"], props["hndsr:steps"], props["hndsr:seed"]) == (4.0, 0, 5)
    assert props["proj:shape"] == [160, 144] and tif in props["processing:lineage"]
    png_record = store.get(png)
    assert png_record is not None and "stac_url" not in job_view(png_record)["result"]
