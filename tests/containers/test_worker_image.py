"""The worker image: one job from a Redis on the host (Debian's redis-server, 127.0.0.1) runs to done
in the container, and its result equals the local engine's."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from podmanstack import Container
from servingstack import engine_png, png_bytes, write_checkpoint
from tooling import require_tool

from serving.jobs.redisserver import EmbeddedRedis
from serving.jobs.store import DONE, JobConfig, JobStore

# The first test may build the images (`make images`: minutes when the layer cache is cold).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PARAMS = {"scale": 4.0, "seed": 0, "steps": 0, "output_format": "png"}


def test_one_job_from_the_host_redis_runs_to_done(images: dict[str, str], tmp_path: Path) -> None:
    require_tool("redis-server")
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        run_one_job(images["worker"], redis_server.url, tmp_path)


def run_one_job(image: str, redis_url: str, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    config = JobConfig(redis_url=redis_url, namespace=f"test:{uuid.uuid4().hex[:12]}")
    server = Container(image, [], tmp_path / "worker.log", mounts=[(checkpoint, "/mnt/models", "ro")])
    server.env = {"OMP_NUM_THREADS": "1"}
    server.command = ["serve", "worker", "--redis-url", config.redis_url, "--namespace", config.namespace]
    server.command += ["--storage-uri", "/mnt/models", "--device", "cpu", "--name", "container-worker"]
    server.command += ["--http-host", "127.0.0.1", "--http-port", str(server.port), "--tile", "128"]
    server.start("/health")
    try:
        store = JobStore(config)
        data = png_bytes(64, 80, seed=3)
        job_id = store.submit(data, PARAMS).id
        record = store.wait(job_id, timeout_s=180) or {}
        assert record.get("status") == DONE, server.log_tail()
        assert record["worker"] == "container-worker"
        assert (int(record["height"]), int(record["width"])) == (256, 320)
        got, want = (
            np.asarray(Image.open(io.BytesIO(v)), dtype=np.int16)
            for v in (store.blobs.get(record["result"]), engine_png(data, tile=128))
        )
        assert got.shape == want.shape == (256, 320, 3)
        assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 1e-3
        assert "hndsr_jobs_attempts_total" in httpx.get(server.url + "/metrics", timeout=5).text
    finally:
        server.stop()
