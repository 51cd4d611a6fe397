"""MLflow as in a cluster: a real ``mlflow server`` (sqlite backend) whose artifacts live in S3 (the
embedded SeaweedFS server); clients only know the server's URL. A checkpoint logged and registered
through it lands in the S3 bucket, and ``models:/hndsr@champion`` loads as the predictor loads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from registry_helpers import log_tiny_checkpoint, register_logged

from components.promotion import CHAMPION, Figures
from hndsr.checkpoint import load_checkpoint
from lake.server import EmbeddedS3, free_ports
from serving.storage import resolve_storage_uri

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"


@pytest.fixture(scope="module")
def tracking_server(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: EmbeddedS3,
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_ports(1)[0]
    s3 = s3_server.settings
    env = os.environ | {
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [
        str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", "s3://mlflow/artifacts", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # generous: 2 shared cores, DB migrations on first start
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_register_through_a_tracking_server_with_s3_artifacts(
    tracking_server: str,
    s3_server: EmbeddedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client holds no S3 keys: the server proxies the artifacts to the bucket.
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    run_id, sha = logged = log_tiny_checkpoint(tracking_server, tmp_path / "ckpt", seed=5)
    registration = register_logged(tracking_server, logged, Figures(25.0, 0.3))
    assert registration.alias == CHAMPION

    objects = [
        o.object_name
        for o in s3_server.settings.client().list_objects("mlflow", prefix="artifacts/", recursive=True)
    ]
    assert any(name.endswith(f"{run_id}/artifacts/checkpoint/model.safetensors") for name in objects), objects

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    directory = resolve_storage_uri("models:/hndsr@champion", cache_dir=tmp_path / "cache")
    _, config = load_checkpoint(directory)
    assert config["sha256"] == sha
