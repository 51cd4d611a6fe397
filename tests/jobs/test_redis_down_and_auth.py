"""The job path when Redis is away or wants a password, with real processes: a Redis that is not
listening makes the transformer answer 503 ``jobs_unavailable`` (with Retry-After) on submission and
on status, and makes a worker's /health degraded until Redis is back; a Redis with ``requirepass``
(as manifests/base/redis.yaml runs it) serves transformer and worker through ``redis://:PASSWORD@``
URLs (the manifests' HNDSR_REDIS_URL), and a wrong password is a 503, not a hang or a 500."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from jobstack import fresh_config, worker
from servingstack import b64, free_port, png_bytes, transformer, write_checkpoint
from tooling import require_tool

pytestmark = pytest.mark.slow
V1 = "/v1/models/hndsr:predict"
PASSWORD = "s3cret-for-tests"


class Redis:
    """``redis-server`` on a port of our choosing (so that it can come back on the same one)."""

    def __init__(self, tmp: Path, port: int, password: str | None = None) -> None:
        self.tmp, self.port, self.password = tmp, port, password
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = None) -> str:
        secret = password if password is not None else self.password
        return f"redis://{f':{secret}@' if secret else ''}127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        args = [require_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        args += ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "tiny")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path, free_port(), PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


def _large_request() -> dict:
    return {"instances": [{"image_b64": b64(png_bytes(24, 24, seed=1)), "scale": 4, "steps": 0}]}


def test_transformer_answers_503_jobs_unavailable_while_redis_is_down(tmp_path: Path) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    nowhere = f"http://127.0.0.1:{free_port()}"
    server = transformer(
        tmp_path, nowhere, "--redis-url", down, "--max-sync-tiles", "0", "--rate-limit-rps", "0"
    )
    server.start(ready_path="/v2/health/live")
    try:
        t0 = time.monotonic()
        r = httpx.post(server.url + V1, json=_large_request(), timeout=60)
        assert time.monotonic() - t0 < 30  # fails, does not hang
        assert r.status_code == 503, r.text
        assert r.json()["kind"] == "jobs_unavailable" and "retry shortly" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
        status = httpx.get(server.url + "/jobs/" + "a" * 24, timeout=60)
        assert status.status_code == 503 and status.json()["kind"] == "jobs_unavailable"
        assert "retry-after" in status.headers
    finally:
        server.stop()


def test_worker_health_is_degraded_while_redis_is_down_and_recovers(checkpoint: Path, tmp_path: Path) -> None:
    store = Redis(tmp_path, free_port()).start()
    job_worker = worker(fresh_config(store.url()), checkpoint, tmp_path / "worker.log")
    job_worker.start()
    try:
        assert httpx.get(job_worker.url + "/health").json()["status"] == "ready"
        store.stop()
        deadline = time.monotonic() + 60
        while (r := httpx.get(job_worker.url + "/health", timeout=30)).status_code != 503:
            assert time.monotonic() < deadline, (r.text, job_worker.log_tail())
            time.sleep(0.5)
        body = r.json()
        assert body["status"] == "degraded" and body["ready"] is False
        assert "Redis unreachable" in body["reason"] and "retry-after" in r.headers
        assert httpx.get(job_worker.url + "/live").status_code == 200  # not restarted for Redis's sake
        store.start()  # back on the same port
        deadline = time.monotonic() + 60
        while (r := httpx.get(job_worker.url + "/health", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, (r.text, job_worker.log_tail())
            time.sleep(0.5)
        assert r.json()["status"] == "ready"
    finally:
        job_worker.stop()
        store.stop()


def test_password_protected_redis_serves_transformer_and_worker(
    secured: Redis, checkpoint: Path, tmp_path: Path
) -> None:
    config = fresh_config(secured.url(), namespace="hndsr:jobs")  # the transformer's namespace
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = ("--redis-url", secured.url(), "--max-sync-tiles", "0", "--rate-limit-rps", "0")
    server = transformer(tmp_path, nowhere, *args)
    job_worker = worker(config, checkpoint, tmp_path / "worker.log")
    server.start(ready_path="/v2/health/live")
    try:
        job_worker.start()
        r = httpx.post(server.url + V1, json=_large_request(), timeout=60)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (status := httpx.get(f"{server.url}/jobs/{job_id}").json())["status"] != "done":
            assert status["status"] in ("queued", "running"), status
            assert time.monotonic() < deadline, job_worker.log_tail()
            time.sleep(0.2)
        result = httpx.get(f"{server.url}/jobs/{job_id}/result")
        assert result.status_code == 200 and result.content.startswith(b"\x89PNG")
        # Without the password nothing is readable: the data really is behind it.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=secured.port).ping()
    finally:
        job_worker.stop()
        server.stop()


def test_wrong_redis_password_is_a_503_with_the_reason(secured: Redis, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    wrong = secured.url(password="not-the-password")
    server = transformer(
        tmp_path, nowhere, "--redis-url", wrong, "--max-sync-tiles", "0", "--rate-limit-rps", "0"
    )
    server.start(ready_path="/v2/health/live")
    try:
        r = httpx.post(server.url + V1, json=_large_request(), timeout=60)
        assert r.status_code == 503 and r.json()["kind"] == "jobs_unavailable", r.text
        assert "Authentication" in r.json()["error"] or "WRONGPASS" in r.json()["error"]
        assert "not-the-password" not in r.text  # the URL's secret is never echoed
    finally:
        server.stop()
    assert "not-the-password" not in server.log.read_text(errors="replace")
