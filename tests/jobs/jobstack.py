"""Helpers of the job tests: a real Redis (Debian's redis-server on 127.0.0.1, a free port, no
persistence) and ``hndsr serve worker`` subprocesses, started and stopped by the fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from servingstack import ROOT, free_port

from serving.jobs.redisserver import EmbeddedRedis
from serving.jobs.store import JobConfig

STARTUP_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server
    assert server.proc is None


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


@dataclass
class WorkerProcess:
    """A ``hndsr serve worker`` subprocess on 127.0.0.1 with its /health and /metrics port."""

    config: JobConfig
    checkpoint: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:6]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            "hndsr.cli",
            "serve",
            "worker",
            "--redis-url",
            c.redis_url,
            "--namespace",
            c.namespace,
            "--storage-uri",
            str(self.checkpoint),
            "--device",
            "cpu",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.port),
            "--visibility-timeout-s",
            str(c.visibility_timeout_s),
            "--backoff-s",
            str(c.backoff_s),
            "--result-ttl-s",
            str(c.result_ttl_s),
            "--name",
            self.name,
            *self.extra,
        ]

    def start(self, *, wait: bool = True) -> WorkerProcess:
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"worker not ready within {STARTUP_TIMEOUT_S} s: {self.log_tail()}")

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5.0).text

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL mid-job, as an OOM kill or a lost node would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample, or of a ``name{labels}`` line given in full."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(f"{name} not in /metrics")
