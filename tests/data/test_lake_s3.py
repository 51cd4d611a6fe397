"""The S3 data lake against a real server (SeaweedFS on 127.0.0.1): sync, prepare from s3://, CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from imagesets import write_clean_set
from typer.testing import CliRunner

from hndsr.errors import ConfigError, HNDSRError
from hndsr_cli import app
from lake.server import EmbeddedS3, free_ports
from lake.storage import LakeError, S3Settings, download_prefix, ensure_buckets, lake_uri, upload_dir

runner = CliRunner()


def _keys(settings: S3Settings, bucket: str, prefix: str) -> list[str]:
    return sorted(o.object_name for o in settings.client().list_objects(bucket, prefix, recursive=True))


def test_buckets_exist_and_settings_come_from_the_environment(s3_server: EmbeddedS3) -> None:
    settings = S3Settings.from_env(s3_server.settings.env())
    assert settings == s3_server.settings
    assert ensure_buckets(settings) == []  # the server created hndsr, dvc and mlflow
    assert lake_uri(settings, "models", "0.1.0/") == "s3://hndsr/models/0.1.0"
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL"):
        S3Settings.from_env({})


def test_upload_download_round_trip_skips_unchanged(s3_server: EmbeddedS3, tmp_path: Path) -> None:
    s = s3_server.settings
    src = tmp_path / "raw"
    write_clean_set(src, n=3)
    first = upload_dir(s, src, "s3://hndsr/roundtrip/raw")
    assert (first.transferred, first.unchanged) == (3, 0)
    assert upload_dir(s, src, "s3://hndsr/roundtrip/raw").transferred == 0
    mirror = tmp_path / "mirror"
    assert download_prefix(s, "s3://hndsr/roundtrip/raw/", mirror).transferred == 3
    again = download_prefix(s, "s3://hndsr/roundtrip/raw", mirror)
    assert (again.transferred, again.unchanged) == (0, 3)
    for p in src.rglob("*.png"):
        assert (mirror / p.relative_to(src)).read_bytes() == p.read_bytes()
    s.client().remove_object("hndsr", "roundtrip/raw/towns/img_00.png")
    download_prefix(s, "s3://hndsr/roundtrip/raw", mirror)
    assert not (mirror / "towns" / "img_00.png").exists()  # deleted upstream, deleted here


def test_prepare_from_s3_then_publish_processed(
    s3_server: EmbeddedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in s3_server.settings.env().items():
        monkeypatch.setenv(key, value)
    src = tmp_path / "raw"
    write_clean_set(src, n=4)
    assert runner.invoke(app, ["data", "upload", str(src), "s3://hndsr/lake/raw"]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  tile_size: 48\ndata:\n  patch_size: 48\n")
    args = [
        "prepare",
        "--src",
        "s3://hndsr/lake/raw",
        "--out",
        str(tmp_path / "processed"),
        "--params",
        str(params),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cat = pd.read_parquet(tmp_path / "processed" / "catalog.parquet")
    assert cat["source"].str.startswith("s3://hndsr/lake/raw/").all() and len(cat) == 16
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and "0 written" in rerun.output
    published = runner.invoke(
        app, ["data", "upload", str(tmp_path / "processed"), "s3://hndsr/lake/processed"]
    )
    assert published.exit_code == 0, published.output
    keys = _keys(s3_server.settings, "hndsr", "lake/processed/")
    assert "lake/processed/catalog.parquet" in keys
    assert any(k.startswith("lake/processed/train/hr/") for k in keys)
    assert not any("/." in k for k in keys)  # local bookkeeping stays local


def test_lake_errors_are_one_line(
    s3_server: EmbeddedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = S3Settings(s3_server.endpoint, s3_server.access_key, "not-the-secret")
    with pytest.raises(LakeError, match="AWS_SECRET_ACCESS_KEY"):
        download_prefix(wrong, "s3://hndsr/lake/raw", tmp_path / "never")
    for key, value in s3_server.settings.env().items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["data", "download", "s3://no-such-bucket/x", str(tmp_path / "never")])
    assert result.exit_code == 2 and "NoSuchBucket" in result.output and "Traceback" not in result.output
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    result = runner.invoke(app, ["data", "lake-init"])
    assert result.exit_code == 2 and "AWS_ENDPOINT_URL" in result.output


def test_s3_server_command_serves_until_interrupted(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    hndsr = Path(sys.executable).parent / "hndsr"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "cli-secret"}
    proc = subprocess.Popen(
        [str(hndsr), "data", "s3-server", "--dir", str(tmp_path / "lake"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # As from a terminal: a shell that starts the test run in the background hands SIGINT down
        # ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl+C" in line or not line:
                break
        text = "".join(lines)
        assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}" in text, text
        settings = S3Settings(f"http://127.0.0.1:{port}", "hndsr", "cli-secret")
        assert ensure_buckets(settings) == []
        proc.send_signal(signal.SIGINT)
        # communicate, not wait: the rest of its output is drained, so a full pipe cannot block its exit
        rest, _ = proc.communicate(timeout=120)  # it stops SeaweedFS first: slow on a loaded machine
        assert proc.returncode == 0, text + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not list(tmp_path.glob("lake/store/*.lock"))


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HNDSRError, match=f"port {port}.*not available"):
            EmbeddedS3(tmp_path / "s3", port=port, startup_timeout_s=30).start()
