"""``hndsr serve worker`` processes against a real Redis: a worker SIGKILLed mid-job, many concurrent
submissions over two workers, health and metrics."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from jobstack import fresh_config, metric_value, metrics_of, name_of, start_all, worker
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servingstack import ROOT, engine_png, png_bytes, write_checkpoint

from hndsr.image_read import read_image_bytes
from serving.jobs.store import DONE, RUNNING, JobStore

PARAMS = {"scale": 4.0, "seed": 0, "steps": 0, "output_format": "png"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def assert_same_image(a: bytes, b: bytes) -> None:
    """Equal up to one 8-bit level: another process may use other thread counts (float sum order)."""
    x, y = (np.asarray(Image.open(io.BytesIO(v)), dtype=np.int16) for v in (a, b))
    assert x.shape == y.shape
    assert np.abs(x - y).max() <= 1 and np.mean(x != y) < 1e-3


def test_a_job_of_a_killed_worker_completes_on_another(
    redis_server,
    checkpoint: Path,
    tmp_path: Path,
) -> None:
    config = fresh_config(redis_server.url, visibility_timeout_s=3.0)
    store = JobStore(config)
    data = png_bytes(224, 224, seed=11)
    workers = [worker(config, checkpoint, tmp_path / f"w{i}.log", "--tile", "128") for i in (0, 1)]
    try:
        start_all(workers)
        job_id = store.submit(data, PARAMS).id
        deadline = time.monotonic() + 120
        while True:  # mid-job: running, some tiles done, not all
            record = store.get(job_id) or {}
            if record.get("status") == RUNNING and int(record.get("tiles_done", 0)) > 0:
                break
            assert record.get("status") != DONE, "the job finished before it could be killed: make it larger"
            assert time.monotonic() < deadline, f"the job never ran: {[w.log_tail() for w in workers]}"
            time.sleep(0.05)
        victim, rescuer = workers if record["worker"] == name_of(workers[0]) else workers[::-1]
        assert record["worker"] == name_of(victim)
        tiles_total = int(record["tiles_total"])
        assert 0 < int(record["tiles_done"]) < tiles_total
        victim.kill()  # the other worker is idle: it takes the job once the lease expires
        record = store.wait(job_id, timeout_s=180) or {}
        assert record.get("status") == DONE, rescuer.log_tail()
        assert record["worker"] == name_of(rescuer)
        assert (record["attempts"], record["completions"]) == ("2", "1")
        assert int(record["tiles_done"]) == tiles_total
        assert_same_image(store.blobs.get(record["result"]), engine_png(data, tile=128))
        assert metric_value(metrics_of(rescuer), "hndsr_jobs_attempts_total", outcome="done") == 1.0
        assert store.counts()["processing"] == 0
    finally:
        for w in workers:
            w.stop()


def test_many_concurrent_submissions_complete_exactly_once(
    redis_server,
    checkpoint: Path,
    tmp_path: Path,
) -> None:
    config = fresh_config(redis_server.url)
    workers = [worker(config, checkpoint, tmp_path / f"w{i}.log") for i in range(2)]
    workers[0].env["HNDSR_REVISION"] = "7d9f8c6b5"  # the manifests pass the pod-template-hash
    try:
        start_all(workers)
        store = JobStore(config)
        images = [png_bytes(16 + 8 * (i % 3), 24, seed=i) for i in range(24)]
        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent producers
            ids = list(pool.map(lambda d: store.submit(d, PARAMS).id, images))
        assert len(set(ids)) == 24
        records = [store.wait(job_id, timeout_s=180) or {} for job_id in ids]
        assert [r.get("status") for r in records] == [DONE] * 24, [w.log_tail() for w in workers]
        assert all(r["completions"] == "1" and r["attempts"] == "1" for r in records)
        for data, record in zip(images, records, strict=True):
            h, w = read_image_bytes(data).height, read_image_bytes(data).width
            assert (int(record["height"]), int(record["width"])) == (4 * h, 4 * w)
        counts = store.counts()
        assert (counts["queued"], counts["processing"], counts["dead"], counts["completed"]) == (0, 0, 0, 24)
        texts = [metrics_of(w) for w in workers]
        done = [metric_value(t, "hndsr_jobs_attempts_total", outcome="done") for t in texts]
        assert sum(done) == 24 and min(done) > 0, done  # both took a share, nothing ran twice
        assert {r["worker"] for r in records} == {name_of(w) for w in workers}
        assert metric_value(texts[0], "hndsr_jobs_queue_depth") == 0.0
        assert metric_value(texts[0], "hndsr_jobs_dead_letter") == 0.0
        assert metric_value(texts[0], "hndsr_jobs_redis_up") == 1.0
        assert metric_value(texts[0], "hndsr_jobs_latency_seconds_count") == done[0]
        assert metric_value(texts[0], "hndsr_jobs_worker_peak_rss_bytes") > 50e6
        # Every sample names the worker's revision and the model it loaded, as the servers' do.
        samples = [s for f in text_string_to_metric_families(texts[0]) for s in f.samples]
        assert {s.name for s in samples if s.name.startswith("hndsr_jobs_")} >= {
            "hndsr_jobs_queue_depth",
            "hndsr_jobs_attempts_total",
            "hndsr_jobs_worker_peak_rss_bytes",
        }
        for sample in (s for s in samples if s.name.startswith("hndsr_jobs_")):
            assert sample.labels["revision"] == "7d9f8c6b5", sample
            assert sample.labels["model_version"] == records[0]["model_version"], sample
        health = httpx.get(workers[0].url + "/health", timeout=5).json()
        assert health["ready"] is True and health["worker"] == name_of(workers[0])
        assert httpx.get(workers[0].url + "/live", timeout=5).status_code == 200
        missing = httpx.get(workers[0].url + "/nope", timeout=5)
        assert missing.status_code == 404 and "/metrics" in missing.json()["error"]
    finally:
        for w in workers:
            w.stop()
    assert all(w.proc is None for w in workers)


def test_worker_with_a_missing_checkpoint_fails_loudly(redis_server, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "hndsr_cli", "serve", "worker", "--redis-url", redis_server.url]
    cmd += ["--storage-uri", str(tmp_path / "missing"), "--http-port", "0", "--http-host", "127.0.0.1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "missing" in proc.stderr and "Traceback" not in proc.stderr
