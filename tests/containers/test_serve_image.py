"""The serve image as the InferenceService runs it: predictor (the ServingRuntime's args, the release
checkpoint mounted read-only at /mnt/models) and transformer (the InferenceService's args plus what
KServe appends) from the image, one x4 request from the host, /metrics, and a tampered checkpoint."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from podmanstack import ROOT, Container
from servingstack import b64, png_bytes, serving_pair

from hndsr.checkpoint import load_checkpoint
from hndsr.image_read import read_image_bytes
from hndsr.inference import Upscaler, upscale_raster

# The first test may build the images (`make images`: minutes when the layer cache is cold).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RELEASE = ROOT / "hndsr" / "release"
V1 = "/v1/models/hndsr:predict"
THREADS = {"OMP_NUM_THREADS": "2"}


def manifest(path: str, kind: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "manifests" / path).read_text())
    return next(d for d in docs if d and d["kind"] == kind)


def with_port(args: list[str], port: int) -> list[str]:
    out = list(args)
    out[out.index("--http-port") + 1] = str(port)
    return out


def predictor_container(tmp: Path, image: str, checkpoint: Path) -> Container:
    spec = manifest("base/servingruntime.yaml", "ServingRuntime")["spec"]["containers"][0]
    mount = spec["args"][spec["args"].index("--storage-uri") + 1]
    assert mount == "/mnt/models"  # where KServe's storage initializer puts the model
    server = Container(image, [], tmp / "predictor.log", mounts=[(checkpoint, mount, "ro")], env=THREADS)
    server.command = with_port(spec["args"], server.port)
    return server


def transformer_container(tmp: Path, image: str, predictor: Container) -> Container:
    spec = manifest("base/inferenceservice.yaml", "InferenceService")["spec"]["transformer"]["containers"][0]
    args = list(spec["args"])
    i = args.index("--request-stats")  # the lake (S3) is not part of this test
    del args[i : i + 2]
    server = Container(image, [], tmp / "transformer.log", env=THREADS)
    # KServe appends these, in its own spelling.
    server.command = [*args, "--model_name", "hndsr", "--predictor_host", f"127.0.0.1:{predictor.port}"]
    server.command += ["--http_port", str(server.port)]
    return server


@pytest.fixture(scope="module")
def stack(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Container, Container]]:
    tmp = tmp_path_factory.mktemp("serve-image")
    pred = predictor_container(tmp, images["serve"], RELEASE).start("/v2/models/hndsr/ready")
    in_front = lambda p: transformer_container(tmp, images["serve"], p).start("/v2/health/ready")  # noqa: E731
    with serving_pair(pred, in_front) as pair:
        yield pair


def test_x4_request_from_the_host_equals_the_local_engine(stack: tuple[Container, Container]) -> None:
    pred, trans = stack
    data = png_bytes(40, 52, seed=5)  # one tile: the predictor sends the final 8-bit pixels
    r = httpx.post(trans.url + V1, json={"instances": [{"image_b64": b64(data), "scale": 4}]}, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()["predictions"][0]
    assert (out["width"], out["height"], out["scale"], out["tiles"]) == (208, 160, 4.0, 1)
    health = httpx.get(pred.url + "/health").json()
    model, config = load_checkpoint(RELEASE)
    assert health["checkpoint_sha256"] == config["sha256"]
    served = read_image_bytes(base64.b64decode(out["image_b64"]))
    got = np.rint(served.data * 255).astype(np.uint8)
    engine = Upscaler(model, tile=out["tile_size"], overlap=32, halo=32, batch_size=1)
    local = upscale_raster(engine, read_image_bytes(data), scale=4.0)
    want = np.rint(np.clip(local.data[:3], 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


def test_metrics_answer(stack: tuple[Container, Container]) -> None:
    pred, trans = stack
    for server in (pred, trans):
        r = httpx.get(server.url + "/metrics", timeout=10)
        assert r.status_code == 200 and "# TYPE" in r.text
    assert "hndsr_" in httpx.get(trans.url + "/metrics", timeout=10).text


def test_tampered_checkpoint_keeps_the_predictor_not_ready(images: dict[str, str], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(RELEASE, ckpt)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\xde\xad\xbe\xef")
    server = predictor_container(tmp_path, images["serve"], ckpt).start("/v2/health/live")
    try:
        assert httpx.get(server.url + "/v2/models/hndsr/ready").status_code == 503
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "sha256 mismatch" in health.json()["reason"]
        assert "NOT READY" in server.log_tail(20000)
    finally:
        server.stop()
