"""The containers' probes name the servers' real endpoints: the predictor, transformer and worker are
started with the args of the rendered manifests (plus what KServe appends to a transformer's args),
on 127.0.0.1 and free ports, and every liveness/readiness path must answer 200 once they are ready."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube_render import MANIFESTS, find, needs_kubectl, render
from servingstack import Server, free_port, write_checkpoint
from tooling import require_tool

pytestmark = [needs_kubectl, pytest.mark.slow]


def _isvc() -> dict[str, Any]:
    (isvc,) = find(render(MANIFESTS / "overlays" / "prod"), "InferenceService", "hndsr")
    return isvc


def _runtime_container() -> dict[str, Any]:
    (runtime,) = find(render(MANIFESTS / "overlays" / "prod"), "ServingRuntime", "hndsr")
    return dict(runtime["spec"]["containers"][0])


def _worker_container() -> dict[str, Any]:
    (worker,) = find(render(MANIFESTS / "overlays" / "prod"), "Deployment", "hndsr-worker")
    return dict(worker["spec"]["template"]["spec"]["containers"][0])


def _probes(container: dict[str, Any]) -> list[tuple[str, str, int | str]]:
    return [
        (probe, container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("livenessProbe", "readinessProbe")
    ]


def _serve_args(container: dict[str, Any], replace: dict[str, str]) -> list[str]:
    """The container's args after `hndsr serve`, with cluster paths swapped for local ones."""
    args = [replace.get(a, a) for a in container["args"]]
    assert args[0] == "serve"
    return args[1:]


def _port_of(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (named,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(named)


def _check(server: Server, container: dict[str, Any]) -> None:
    args = container["args"]
    http_port = int(args[args.index("--http-port") + 1]) if "--http-port" in args else 8080
    for probe, path, port in _probes(container):
        assert _port_of(container, port) == http_port, (
            f"{probe} probes port {port}, the server listens on {http_port}"
        )
        response = httpx.get(server.url + path, timeout=10.0)
        assert response.status_code == 200, f"{probe} {path}: {response.status_code} {response.text[:300]}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    container = _runtime_container()
    args = _serve_args(container, {"/mnt/models": str(checkpoint)})
    server = Server([*args, "--device", "cpu"], tmp_path_factory.mktemp("logs") / "predictor.log")
    server.start(ready_path=container["readinessProbe"]["httpGet"]["path"])
    yield server
    server.stop()


def test_predictor_probes(predictor: Server) -> None:
    _check(predictor, _runtime_container())


def test_transformer_probes_with_the_args_kserve_appends(predictor: Server, tmp_path: Path) -> None:
    (container,) = _isvc()["spec"]["transformer"]["containers"]
    stats = tmp_path / "request-stats"
    args = _serve_args(container, {"s3://hndsr/request-stats": str(stats)})
    # KServe's custom-transformer defaulting: its own spelling, appended after ours.
    kserve_args = ["--model_name", "hndsr", "--predictor_host", predictor.url.removeprefix("http://")]
    server = Server([*args, *kserve_args], tmp_path / "transformer.log")
    try:
        server.start(ready_path=container["readinessProbe"]["httpGet"]["path"])
        _check(server, container)
        assert httpx.get(server.url + "/health", timeout=10.0).json()["predictor"] == predictor.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_worker_probes(checkpoint: Path, redis_url: str, tmp_path: Path) -> None:
    container = _worker_container()
    args = _serve_args(container, {"s3://hndsr/models/0.1.0": str(checkpoint)})
    args = [a for i, a in enumerate(args) if "--s3-prefix" not in (a, args[i - 1])]  # results stay in Redis
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"] != "HNDSR_REDIS_URL"}
    server = Server(
        [*args, "--device", "cpu"], tmp_path / "worker.log", env=env | {"HNDSR_REDIS_URL": redis_url}
    )
    try:
        server.start(ready_path=container["readinessProbe"]["httpGet"]["path"])
        _check(server, container)
    finally:
        server.stop()
