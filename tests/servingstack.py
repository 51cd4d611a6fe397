"""Helpers of the serving tests (tests/serving): a tiny checkpoint, small images, and real KServe
servers started as subprocesses (``python -m hndsr_cli serve ...``) on 127.0.0.1 and free ports, stopped
by the fixture that started them."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import torch
from PIL import Image
from synthetic import TINY_MODEL, synthetic_aerial

from hndsr.checkpoint import save_checkpoint
from hndsr.image_read import read_image_bytes
from hndsr.image_write import encode_image
from hndsr.inference import Upscaler, upscale_raster
from hndsr.models.hndsr_model import HNDSR

ROOT = Path(__file__).resolve().parents[1]
# Server start-up (model load, warm-up) on a loaded machine can be slow: HNDSR_TEST_STARTUP_S raises it.
STARTUP_TIMEOUT_S = float(os.environ.get("HNDSR_TEST_STARTUP_S", "120"))


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, accept: tuple[int, ...], timeout_s: float, *, poll_s: float
) -> str | None:
    """Poll ``url`` until it answers a status in ``accept``: None when it did, else why not
    ("exited with N" as soon as ``proc`` exits, or "not ready within T s")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2.0).status_code in accept:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    return f"not ready within {timeout_s} s"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model(grid: str = "latent") -> HNDSR:
    """The tiny test architecture with a non-zero decoder tail, so the output is not plain bicubic;
    ``grid`` is the operator's (``lr``: it works on the LR pixels)."""
    torch.manual_seed(1234)
    config = {k: dict(v) for k, v in TINY_MODEL.items()}
    config["operator"]["grid"] = grid
    model = HNDSR(**config)
    with torch.no_grad():
        model.autoencoder.decoder_tail.weight.normal_(0.0, 0.02)
    return model.eval()


def write_checkpoint(directory: Path, grid: str = "latent") -> Path:
    return save_checkpoint(tiny_model(grid), directory, stages=["autoencoder", "operator", "diffusion"])


def png_bytes(h: int, w: int, seed: int = 0, mode: str = "RGB") -> bytes:
    img = Image.fromarray(synthetic_aerial((h, w), seed))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def engine_png(data: bytes, tile: int) -> bytes:
    """The in-process engine's x4 PNG on one thread, as a worker (OMP_NUM_THREADS=1) renders it: the
    reference a served job's result must equal (two threads on a busy 2-core machine spin for many
    seconds over hundreds of small tiles)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        upscaler = Upscaler(tiny_model(), device="cpu", tile=tile)
        raster = upscale_raster(upscaler, read_image_bytes(data), scale=4.0, steps=0)
    finally:
        torch.set_num_threads(threads)
    return encode_image(raster, "png", png_level=1)


def rgbn_geotiff(h: int = 40, w: int = 48) -> bytes:
    """A 16-bit R,G,B,NIR GeoTIFF in UTM 33N (10 m pixels): the georeferenced input of the servers' tests."""
    import rasterio
    from rasterio.transform import Affine

    rgbn = np.concatenate([lr_image(h, w, seed=7), lr_image(h, w, seed=8)[:1]])
    buf = io.BytesIO()
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 4, "dtype": "uint16", "crs": "EPSG:32633"}
    utm = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
    with rasterio.open(buf, "w", transform=utm, **profile) as dst:
        dst.write(np.rint(rgbn * 65535).astype(np.uint16))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ReadyProcess:
    """A server subprocess logging to ``log`` and answering on 127.0.0.1:``port``; subclasses say how
    to stop it."""

    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None
    startup_timeout_s: ClassVar[float] = STARTUP_TIMEOUT_S

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(
        self, cmd: list[str], what: str, ready_path: str, accept: tuple[int, ...], poll_s: float, **popen: Any
    ) -> None:
        """Start ``cmd`` and wait until ``ready_path`` answers; else stop it and raise with its log."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
        failure = wait_ready(self.proc, self.url + ready_path, accept, self.startup_timeout_s, poll_s=poll_s)
        if failure is None:
            return
        if self.proc.poll() is None:
            self.stop()
        raise RuntimeError(f"{what} {failure}: {self.log_tail()}")

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


@dataclass(eq=False)  # hashable: tests key dicts by server
class Server(ReadyProcess):
    """A ``hndsr serve`` subprocess."""

    args: list[str]
    log: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str = "/health", accept: tuple[int, ...] = (200,)) -> Server:
        cmd = [sys.executable, "-m", "hndsr_cli", "serve", *self.args, "--http-port", str(self.port)]
        env = os.environ | {"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"} | self.env
        self.launch(cmd, self.args[0], ready_path, accept, 0.25, cwd=ROOT, env=env, start_new_session=True)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies mid-request, as on an OOM kill or a node loss."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serving_pair(
    pred: ReadyProcess, start_transformer: Callable[[ReadyProcess], ReadyProcess]
) -> Iterator[tuple[Any, Any]]:
    """A started predictor and the transformer started in front of it; both stopped on exit."""
    try:
        trans = start_transformer(pred)
        try:
            yield pred, trans
        finally:
            trans.stop()
    finally:
        pred.stop()


def predictor(tmp: Path, storage_uri: str | Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    args = ["predictor", "--storage-uri", str(storage_uri), "--device", "cpu", *extra]
    return Server(args, tmp / "predictor.log", env=env or {})


def transformer(
    tmp: Path, predictor_url: str, *extra: str, name: str = "transformer", env: dict[str, str] | None = None
) -> Server:
    host = predictor_url.removeprefix("http://")
    args = ["transformer", "--predictor-host", host, *extra]
    return Server(args, tmp / f"{name}.log", env=env or {})


def lr_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(3, h, w) float32 in [0, 1], as the transformer decodes the PNG of ``synthetic_aerial``."""
    return np.moveaxis(synthetic_aerial((h, w), seed), -1, 0).astype(np.float32) / 255.0
