"""Where the predictor's checkpoint comes from: s3:// on a real S3 server (SeaweedFS), and a tampered
checkpoint that keeps a real predictor process not ready, with the reason on /health, in 503s and in
the log. (``models:/name@alias`` is resolved through MLflow; its test belongs to the MLflow issue.)"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from servingstack import b64, png_bytes, predictor, write_checkpoint

pytest.importorskip("kserve")

from hndsr.checkpoint import load_checkpoint
from hndsr.errors import CheckpointError
from serving.storage import resolve_storage_uri

V1 = "/v1/models/hndsr:predict"


@pytest.fixture(scope="module")
def s3(s3_server: object) -> object:
    return s3_server  # the session's S3 server (tests/lakeserver.py)


def upload(server: object, directory: Path, prefix: str) -> str:
    settings = server.settings  # type: ignore[attr-defined]
    client = settings.client()
    for f in sorted(directory.iterdir()):
        client.fput_object(settings.bucket, f"{prefix}/{f.name}", str(f))
    return f"s3://{settings.bucket}/{prefix}"


def test_s3_checkpoint_serves(s3: object, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    uri = upload(s3, ckpt, "models/hndsr/tiny")
    env = s3.settings.env()  # type: ignore[attr-defined]
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        local = resolve_storage_uri(uri, cache_dir=tmp_path / "cache")
        _, config = load_checkpoint(local)  # hash verified after the download
        assert config["sha256"] == load_checkpoint(ckpt)[1]["sha256"]
        with pytest.raises(CheckpointError, match="no objects under"):
            resolve_storage_uri(uri + "-missing", cache_dir=tmp_path / "cache")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pytest.raises(CheckpointError, match="AWS_ENDPOINT_URL"):
        from serving.storage import s3_settings

        s3_settings({})
    server = predictor(tmp_path, uri, "--cache-dir", str(tmp_path / "pcache"), env=env).start()
    try:
        health = httpx.get(server.url + "/health").json()
        assert health["status"] == "ready" and health["storage_uri"] == uri
        assert health["checkpoint_sha256"] == config["sha256"]
    finally:
        server.stop()


def test_tampered_checkpoint_keeps_the_server_not_ready(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\xde\xad\xbe\xef")
    server = predictor(tmp_path, ckpt).start(ready_path="/v2/health/live")
    try:
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503
        assert health.json()["status"] == "failed" and "sha256 mismatch" in health.json()["reason"]
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503  # not "ready" while broken
        assert httpx.get(server.url + "/v2/models/hndsr/ready").status_code == 503
        r = httpx.post(server.url + V1, json={"instances": [{"lr_b64": b64(png_bytes(8, 8))}]})
        assert r.status_code == 503 and "sha256 mismatch" in r.json()["error"] and "retry-after" in r.headers
        log = server.log.read_text()
        assert "NOT READY" in log and "sha256 mismatch" in log
    finally:
        server.stop()
