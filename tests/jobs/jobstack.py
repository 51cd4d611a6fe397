"""Helpers of the job tests: a real Redis (Debian's redis-server on 127.0.0.1, a free port, no
persistence) and ``hndsr serve worker`` subprocesses, started and stopped by the fixtures."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from servingstack import Server

from serving.jobs.store import JobConfig
from serving.metrics import sample_value


def fresh_config(redis_url: str, **overrides: object) -> JobConfig:
    """A namespace of its own per test: one Redis serves them all without crosstalk."""
    values: dict[str, object] = {
        "namespace": f"test:{uuid.uuid4().hex[:12]}",
        "visibility_timeout_s": 3.0,
        "backoff_s": 0.2,
        "backoff_max_s": 2.0,
    }
    values.update(overrides)
    return JobConfig(redis_url=redis_url, **values)  # type: ignore[arg-type]


def worker(config: JobConfig, checkpoint: Path, log: Path, *extra: str) -> Server:
    """A ``hndsr serve worker`` subprocess (not started) on 127.0.0.1; its /health, /live and /metrics
    on ``server.port``, its name (in job records) ``server.args[-1]``."""
    c = config
    args = [
        "worker",
        "--redis-url",
        c.redis_url,
        "--namespace",
        c.namespace,
        "--storage-uri",
        str(checkpoint),
    ]
    args += [
        "--device",
        "cpu",
        "--http-host",
        "127.0.0.1",
        "--visibility-timeout-s",
        str(c.visibility_timeout_s),
    ]
    args += ["--backoff-s", str(c.backoff_s), "--result-ttl-s", str(c.result_ttl_s), *extra]
    args += ["--name", f"w-{uuid.uuid4().hex[:6]}"]
    return Server(args, log, env={"OMP_NUM_THREADS": "1"})


def name_of(server: Server) -> str:
    return server.args[-1]


def start_all(servers: list[Server]) -> None:
    """Start servers side by side (each start waits for its /health)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))


def metrics_of(server: Server) -> str:
    return httpx.get(server.url + "/metrics", timeout=5.0).text


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels`` (KeyError: none)."""
    return sample_value(text, name, **labels)
