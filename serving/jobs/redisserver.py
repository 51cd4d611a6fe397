"""A throw-away Redis for tests and benchmarks: Debian's ``redis-server`` on 127.0.0.1, a free port,
no persistence (``--save "" --appendonly no``); ``with EmbeddedRedis(dir) as r: r.url``."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hndsr.errors import ConfigError
from lake.server import free_ports


class EmbeddedRedis:
    def __init__(self, directory: str | Path, *, startup_timeout_s: float = 30.0) -> None:
        self.directory = Path(directory)
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> EmbeddedRedis:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigError("redis-server is not installed: run scripts/install-system-deps.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken before the server binds it: try another
            self.port = free_ports(1)[0]
            args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--dir", str(self.directory), "--logfile", str(self.log_path)]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if redis.Redis(port=self.port, socket_timeout=1.0).ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.05)
            self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise ConfigError(f"redis-server did not start on 127.0.0.1: {tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
