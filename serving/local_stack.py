"""``hndsr serve local`` (``make serve``): predictor + transformer on this machine, ready-to-paste examples.

Both servers run as child processes of this one (``hndsr serve predictor|transformer``), in their own
process group; Ctrl+C or SIGTERM stops both. The checkpoint is the MLflow champion when
``MLFLOW_TRACKING_URI`` is set and no URI is given, else the release checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hndsr.errors import HNDSRError
from serving.ingress import IngressConfig, NginxIngress, https_examples


def default_storage_uri() -> str:
    return "models:/hndsr@champion" if os.environ.get("MLFLOW_TRACKING_URI") else "release"


def _sample_image(path: Path) -> Path:
    """A small synthetic LR image to try the service with (written once)."""
    if path.is_file():
        return path
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    rgb = np.stack(
        [np.sin(xx / 7) + np.cos(yy / 11), np.sin((xx + yy) / 9), np.cos(xx / 5) * np.sin(yy / 13)], -1
    )
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def examples(url: str, image: Path, model: str = "hndsr") -> str:
    return f"""
Ready. Try it:

  # curl (v1), output written to sr.png
  printf '{{"instances": [{{"image_b64": "%s", "scale": 4}}]}}' "$(base64 -w0 {image})" > /tmp/hndsr_req.json
  curl -s -H 'content-type: application/json' --data @/tmp/hndsr_req.json {url}/v1/models/{model}:predict \\
    | python3 -c 'import sys, json, base64; p = json.load(sys.stdin)["predictions"][0]; \\
open("sr.png", "wb").write(base64.b64decode(p.pop("image_b64"))); print(p)'

  # the Python client
  hndsr client sr {image} sr.png --url {url} --scale 4

  # health and metrics
  curl -s {url}/health; curl -s {url}/metrics | grep ^hndsr_

Ctrl+C stops both servers.
"""


def _wait_ready(proc: subprocess.Popen[bytes], url: str, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HNDSRError(f"the {what} exited with code {proc.returncode}; see its log above")
        try:
            r = httpx.get(url + "/health", timeout=2.0)
            if r.status_code == 200:
                return
            if r.status_code == 503 and r.json().get("status") == "failed":
                raise HNDSRError(f"the {what} is up but not ready: {r.json().get('reason')}")
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise HNDSRError(f"the {what} was not ready within {timeout_s:.0f} s")


def _smoke(url: str, image: Path, output: Path) -> None:
    from serving.client import SRClient

    output.parent.mkdir(parents=True, exist_ok=True)
    with SRClient(url) as client:
        result = client.upscale_file(image, output, scale=4.0)
    meta = result.meta
    size = f"{meta.get('width')}x{meta.get('height')}"
    print(
        f"served {image} -> {output} ({size}), model {meta.get('model_version')}, {meta.get('tiles')} tiles, "
        f"cycle PSNR {meta.get('cycle_psnr_db')} dB, timings {meta.get('timings_ms')}",
        flush=True,
    )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_local(
    *,
    storage_uri: str | None,
    transformer_port: int,
    predictor_port: int,
    sample: Path,
    extra_predictor: list[str] | None = None,
    extra_transformer: list[str] | None = None,
    timeout_s: float = 300.0,
    ingress: IngressConfig | None = None,
    smoke: tuple[Path, Path] | None = None,
) -> None:
    """Start the servers and serve until Ctrl+C/SIGTERM; with ``smoke=(image, output)`` upscale that
    image x4 once through the transformer, print the response's figures and stop (the main job's
    serving check)."""
    uri = storage_uri or default_storage_uri()
    base = [sys.executable, "-m", "hndsr_cli", "serve"]
    predictor_cmd = [*base, "predictor", "--http-port", str(predictor_port), "--storage-uri", uri]
    transformer_cmd = [
        *base,
        "transformer",
        "--http-port",
        str(transformer_port),
        "--predictor-host",
        f"127.0.0.1:{predictor_port}",
    ]
    if ingress is not None:  # nginx (on 127.0.0.1) overwrites X-Forwarded-For with the client address
        transformer_cmd += ["--client-ip-header", "X-Forwarded-For"]
    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"starting the predictor on :{predictor_port} with {uri}", flush=True)
        procs.append(subprocess.Popen(predictor_cmd + (extra_predictor or [])))
        _wait_ready(procs[0], f"http://127.0.0.1:{predictor_port}", "predictor", timeout_s)
        print(f"starting the transformer on :{transformer_port}", flush=True)
        procs.append(subprocess.Popen(transformer_cmd + (extra_transformer or [])))
        url = f"http://127.0.0.1:{transformer_port}"
        _wait_ready(procs[1], url, "transformer", timeout_s)
        if smoke is not None:
            _smoke(url, *smoke)
            return
        print(examples(url, _sample_image(sample)), flush=True)
        if ingress is not None:  # make serve-tls: nginx (TLS, limits, buffering) in front
            proxy = NginxIngress(ingress, Path("outputs/ingress"))
            proxy.start()
            assert proxy.proc is not None
            procs.append(proxy.proc)  # stopped (SIGTERM) and watched like the servers
            print(https_examples(proxy), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        raise HNDSRError("a server exited; see its log above")
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        stop()
