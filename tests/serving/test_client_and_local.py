"""What users run against the service, through real servers: ``hndsr serve local --smoke`` (the last
step of `make run`), ``hndsr serve local --tls`` (make serve-tls: nginx in front), ``hndsr client sr``
and ``SRClient``'s retry after a 429's ``Retry-After`` from the transformer's own rate limiter."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from servingstack import Server, free_port, png_bytes, predictor, transformer, write_checkpoint
from tooling import needs_tool

pytest.importorskip("kserve")

from serving.client import ServiceError, SRClient
from serving.metrics import sample_value

pytestmark = pytest.mark.slow
V1 = "/v1/models/hndsr:predict"


def _hndsr(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "hndsr_cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def stack(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """predictor -> transformer with a rate limit of one request per 5 s and client key, burst 1: a
    client's second request within those seconds is answered 429 with Retry-After (each test its own
    key, x-api-key, so its own bucket)."""
    tmp = tmp_path_factory.mktemp("stack")
    pred = predictor(tmp, checkpoint).start()
    try:
        trans = transformer(tmp, pred.url, "--rate-limit-rps", "0.2", "--rate-limit-burst", "1").start()
        try:
            yield trans
        finally:
            trans.stop()
    finally:
        pred.stop()


def test_serve_local_smoke_upscales_once_through_both_servers_and_stops(
    checkpoint: Path, tmp_path: Path
) -> None:
    sample = tmp_path / "sample.png"
    sample.write_bytes(png_bytes(40, 56, seed=3))
    port, predictor_port = free_port(), free_port()
    out = tmp_path / "outputs" / "sample_x4.png"
    run = _hndsr(
        "serve", "local", "--storage-uri", str(checkpoint), "--port", str(port),
        "--predictor-port", str(predictor_port), "--sample", str(sample), "--smoke", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert Image.open(out).size == (224, 160)
    served = [line for line in run.stdout.splitlines() if line.startswith("served ")]
    assert served and f"-> {out} (224x160)" in served[0] and "cycle PSNR" in served[0], run.stdout
    assert _port_closed(port) and _port_closed(predictor_port)  # both servers stopped


def test_serve_local_smoke_with_a_bad_checkpoint_fails_with_one_line(tmp_path: Path) -> None:
    sample = tmp_path / "sample.png"
    sample.write_bytes(png_bytes(16, 16))
    run = _hndsr(
        "serve", "local", "--storage-uri", str(tmp_path / "missing"), "--port", str(free_port()),
        "--predictor-port", str(free_port()), "--sample", str(sample), "--smoke", str(tmp_path / "o.png"),
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "error: the predictor" in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "o.png").exists()


def _refused(url: str) -> float:
    try:
        return sample_value(httpx.get(url + "/metrics").text, "hndsr_requests_total", code="429")
    except KeyError:
        return 0.0


def test_client_retries_after_the_rate_limiters_retry_after(stack: Server) -> None:
    image = png_bytes(24, 32, seed=1)
    with SRClient(stack.url, retries=0, api_key="impatient") as impatient:
        impatient.upscale_bytes(image, scale=2, steps=0)  # takes the one token
        with pytest.raises(ServiceError) as refused:
            impatient.upscale_bytes(image, scale=2, steps=0)
    assert refused.value.status == 429 and "rate limit" in refused.value.server_message
    with SRClient(stack.url, retries=3, api_key="patient") as client:
        client.upscale_bytes(image, scale=2, steps=0)  # the token
        before = _refused(stack.url)
        t0 = time.monotonic()
        result = client.upscale_bytes(image, scale=2, steps=0)  # 429 + Retry-After, then 200
        waited = time.monotonic() - t0
    assert Image.open(io.BytesIO(result.image)).size == (64, 48)
    assert _refused(stack.url) >= before + 1, "no 429 was answered: nothing was retried"
    assert waited >= 1.0, f"answered after {waited:.2f} s: the client did not wait for Retry-After"


def test_client_sr_command_writes_png_and_geotiff(stack: Server, tmp_path: Path) -> None:
    src = tmp_path / "lr.png"
    src.write_bytes(png_bytes(20, 28, seed=4))
    args = ("client", "sr", str(src))
    run = _hndsr(*args, str(tmp_path / "sr.png"), "--url", stack.url, "--scale", "3", "--api-key", "cli-png",
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert Image.open(tmp_path / "sr.png").size == (84, 60)
    assert run.stdout.startswith(f"wrote {tmp_path / 'sr.png'} (84x60, x3, steps=0")
    tif = (str(tmp_path / "sr.tif"), "--url", stack.url, "--protocol", "v2", "--api-key", "cli-tif")
    run = _hndsr(*args, *tif, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    import rasterio

    with rasterio.open(tmp_path / "sr.tif") as ds:
        assert (ds.width, ds.height, ds.count) == (112, 80, 3)
    # The answer's STAC Item, written beside the file and pointed at it (v2: JSON text in parameters).
    from hndsr.stac_items import validate_core

    item = json.loads((tmp_path / "sr.json").read_text())
    validate_core(item, name="sr.json")
    assert item["id"] == "sr" and item["assets"]["data"]["href"] == "sr.tif"
    assert len(item["properties"]["hndsr:checkpoint_sha256"]) == 64 and "sr.json (STAC Item)" in run.stdout


def test_client_sr_samples_write_the_uncertainty_png_and_no_cog_a_plain_geotiff(
    stack: Server, tmp_path: Path
) -> None:
    from hndsr.cog import is_cog

    src = tmp_path / "lr.png"
    src.write_bytes(png_bytes(20, 28, seed=5))
    for protocol in ("v1", "v2"):
        out = tmp_path / f"sr-{protocol}.png"
        opts = ("--samples", "2", "--steps", "2", "--protocol", protocol, "--api-key", f"cli-k-{protocol}")
        run = _hndsr("client", "sr", str(src), str(out), "--url", stack.url, *opts, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        spread = Image.open(tmp_path / f"sr-{protocol}.uncertainty.png")
        assert spread.mode.startswith("I;16") and spread.size == Image.open(out).size == (112, 80)
    plain = tmp_path / "plain.tif"
    opts = ("--no-cog", "--scale", "2", "--api-key", "cli-plain")
    run = _hndsr("client", "sr", str(src), str(plain), "--url", stack.url, *opts, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert plain.is_file() and not is_cog(plain)


def test_client_sr_against_no_service_is_one_line_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "lr.png"
    src.write_bytes(png_bytes(16, 16))
    url = f"http://127.0.0.1:{free_port()}"
    run = _hndsr("client", "sr", str(src), str(tmp_path / "sr.png"), "--url", url, cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "cannot reach" in run.stderr and "is the service up?" in run.stderr
    assert not (tmp_path / "sr.png").exists()


@needs_tool("nginx")
@needs_tool("openssl")
def test_serve_local_tls_serves_https_redirects_http_and_stops_nginx(
    checkpoint: Path, tmp_path: Path
) -> None:
    port, predictor_port, https_port, http_port = (free_port() for _ in range(4))
    cmd = [sys.executable, "-m", "hndsr_cli", "serve", "local", "--tls", "--storage-uri", str(checkpoint)]
    cmd += ["--port", str(port), "--predictor-port", str(predictor_port)]
    cmd += ["--https-port", str(https_port), "--http-port", str(http_port)]
    log = tmp_path / "serve-local.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    cert = tmp_path / "outputs" / "ingress" / "tls" / "tls.crt"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if cert.is_file():
                try:
                    health = httpx.get(f"https://127.0.0.1:{https_port}/health", verify=_trusting(cert))
                    if health.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        with SRClient(f"https://127.0.0.1:{https_port}") as client:
            client._http = httpx.Client(timeout=120, verify=_trusting(cert))  # the self-signed certificate
            result = client.upscale_bytes(png_bytes(24, 24, seed=5), scale=2, steps=0)
        assert Image.open(io.BytesIO(result.image)).size == (48, 48)
        redirect = httpx.get(f"http://127.0.0.1:{http_port}/health", follow_redirects=False)
        assert redirect.status_code in (301, 308)
        assert redirect.headers["location"].startswith(f"https://127.0.0.1:{https_port}/")
        assert f"https://127.0.0.1:{https_port}" in log.read_text()  # the printed examples
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    for p in (port, predictor_port, https_port, http_port):
        assert _port_closed(p), f"port {p} still open after SIGTERM: {log.read_text()[-2000:]}"
