"""Serving benchmark: real KServe predictor + transformer on 127.0.0.1 (a benchmark, not a test).

Measures
- the transformer -> predictor hop per tile-batch encoding (JSON float tensors, the v2 binary tensor
  extension, base64 LR crops in a BYTES element, v1 base64): bytes on the wire and hop time = round
  trip - model time, on a tiny-model predictor so that the model does not drown the hop;
- end-to-end latency p50/p95 for 256x256 -> 1024x1024 and 512x512 -> 2048x2048 (x4), deterministic
  and diffusion (the model's default steps, or 10 when that is 0), with 1 and 4 concurrent clients,
  and tiles per second;
- serving overhead = end-to-end time - in-process engine time for the same image and tile plan
  (``upscale_raster`` with the same tile size and batch), deterministic path, 1 client, the
  transformer sending one batch at a time like the engine, the two runs interleaved so that both
  see the same machine;
- peak resident memory (VmHWM) of each server process.

Usage:
  python benchmarks/serving_latency.py [--checkpoint DIR] [--repeats 3] [--sizes 256,512]
      [--steps 0,10] [--concurrency 1,4] [--json out.json]

Without --checkpoint it uses the release checkpoint, or (while there is none) a freshly initialised
model of the default configuration: same architecture, same cost.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _results import Measurement
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {
    "autoencoder": {"latent_channels": 4, "width": 16},
    "operator": {"width": 16, "depth": 2, "kernel_size": 5, "modes": 2, "cond_dim": 16},
    "diffusion": {"width": 16, "width_mult": [1, 2], "cond_dim": 32},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "hndsr_cli", "serve", *args, "--http-port", str(self.port)]
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{args[0]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{args[0]} not ready: {log.read_text()[-2000:]}")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def transformer_args(pred: Proc, *extra: str) -> list[str]:
    """``hndsr serve transformer`` in front of ``pred``, with no rate limit (the benchmark's clients
    are not abusive)."""
    return ["transformer", "--predictor-host", f"127.0.0.1:{pred.port}", "--rate-limit-rps", "0", *extra]


def aerial(size: int, seed: int) -> bytes:
    """A deterministic textured RGB PNG of ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    for _ in range(6):
        fy, fx, ph = rng.uniform(0.01, 0.12), rng.uniform(0.01, 0.12), rng.uniform(0, 6.28)
        img += rng.uniform(0.05, 0.15, 3) * np.sin(fy * yy + fx * xx + ph)[..., None]
    img += rng.normal(0, 0.03, img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def checkpoint_dir(arg: str | None, tmp: Path) -> tuple[str, str]:
    from hndsr.checkpoint import CONFIG_FILE, release_checkpoint_dir, save_checkpoint
    from hndsr.models.hndsr_model import HNDSR

    if arg:
        return arg, arg
    if (release_checkpoint_dir() / CONFIG_FILE).is_file():
        return "release", "release checkpoint"
    torch.manual_seed(0)
    path = save_checkpoint(HNDSR(), tmp / "default-config", stages=["autoencoder", "operator", "diffusion"])
    return str(path), "freshly initialised default-config model (the release checkpoint is not there yet)"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# ------------------------------------------------------------------------------------ the hop


def bench_hop(url: str, repeats: int) -> list[dict[str, Any]]:
    from serving.batch_encode import TileBatch, decode_v1_response, decode_v2_response, encode_v1, encode_v2
    from serving.codec import ENCODINGS, RenderParams
    from serving.tile_crops import Canvas, choose_tile, crop, plan

    lr = torch.rand(3, 512, 512)
    canvas = Canvas.for_scale(512, 512, 4.0, 4)
    tile = choose_tile(canvas.canvas_h, canvas.canvas_w, max_tile=1024, overlap=32, halo=32, align=4)
    specs = plan(canvas, tile=tile, overlap=32, halo=32, align=4)[:4]
    batch = TileBatch(canvas, specs, [crop(lr, s).numpy() for s in specs], RenderParams(scale=4.0, steps=0))
    rows = []
    with httpx.Client(timeout=600) as http:
        for encoding in (*ENCODINGS, "v1_b64"):
            samples, model, enc_s, dec_s, sizes = [], [], [], [], (0, 0)
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                if encoding == "v1_b64":
                    body, headers = encode_v1(batch)
                    path = "/v1/models/hndsr:predict"
                else:
                    body, headers = encode_v2(batch, encoding)
                    path = "/v2/models/hndsr/infer"
                t1 = time.perf_counter()
                r = http.post(url + path, content=body, headers=headers)
                t2 = time.perf_counter()
                r.raise_for_status()
                res = (
                    decode_v1_response(r.content)
                    if encoding == "v1_b64"
                    else decode_v2_response(r.content, r.headers)
                )
                t3 = time.perf_counter()
                samples.append((t3 - t0) * 1000 - res.model_ms)
                model.append(res.model_ms)
                enc_s.append((t1 - t0) * 1000)
                dec_s.append((t3 - t2) * 1000)
                sizes = (len(body), len(r.content))
            samples, model, enc_s, dec_s = samples[1:], model[1:], enc_s[1:], dec_s[1:]  # first is warm-up
            rows.append(
                {
                    "encoding": encoding,
                    "tiles": len(specs),
                    "tile_px": tile,
                    "request_mb": round(sizes[0] / 2**20, 2),
                    "response_mb": round(sizes[1] / 2**20, 2),
                    "hop_ms_median": round(statistics.median(samples), 1),
                    "client_encode_ms": round(statistics.median(enc_s), 1),
                    "client_decode_ms": round(statistics.median(dec_s), 1),
                    "model_ms_median": round(statistics.median(model), 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------ end to end


def one_request(
    http: httpx.Client, url: str, image_b64: str, steps: int, key: str
) -> tuple[float, dict[str, Any]]:
    body = {"instances": [{"image_b64": image_b64, "scale": 4, "steps": steps}]}
    t0 = time.perf_counter()
    r = http.post(url + "/v1/models/hndsr:predict", json=body, headers={"x-api-key": key})
    dt = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    meta = r.json()["predictions"][0]
    meta.pop("image_b64")
    return dt, meta


def bench_e2e(url: str, size: int, steps: int, clients: int, repeats: int, warmup: bool) -> dict[str, Any]:
    image_b64 = base64.b64encode(aerial(size, seed=size)).decode()
    latencies: list[float] = []
    metas: list[dict[str, Any]] = []

    def client(i: int) -> None:
        with httpx.Client(timeout=3600) as http:
            for _ in range(repeats):
                dt, meta = one_request(http, url, image_b64, steps, f"bench-{i}")
                latencies.append(dt)
                metas.append(meta)

    if warmup:  # first-call allocations, thread pools, FFT plans for this tile size
        with httpx.Client(timeout=3600) as http:
            one_request(http, url, image_b64, 0, "warmup")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    tiles = sum(m["tiles"] for m in metas)
    row = {
        "input": f"{size}x{size}",
        "output": f"{4 * size}x{4 * size}",
        "steps": steps,
        "clients": clients,
        "requests": len(latencies),
        "p50_s": round(percentile(latencies, 50) / 1000, 2),
        "p95_s": round(percentile(latencies, 95) / 1000, 2),
        "tiles_per_request": metas[0]["tiles"],
        "tile_px": metas[0]["tile_size"],
        "tiles_per_s": round(tiles / wall, 2),
        "model_s_median": round(statistics.median(m["timings_ms"]["model"] for m in metas) / 1000, 2),
        "timings_ms_last": metas[-1]["timings_ms"],
    }
    print(json.dumps(row), flush=True)
    return row


def bench_overhead(url: str, checkpoint: str, size: int, repeats: int, compute_batch: int) -> dict[str, Any]:
    """Deterministic path, 1 client: end-to-end through the service vs the in-process engine
    (``upscale_raster``, same tile plan and batch) on the same image, interleaved."""
    from hndsr.checkpoint import load_checkpoint, load_release_checkpoint
    from hndsr.image_read import read_image_bytes
    from hndsr.inference import Upscaler, upscale_raster

    data = aerial(size, seed=size)
    image_b64 = base64.b64encode(data).decode()
    model = (load_release_checkpoint() if checkpoint == "release" else load_checkpoint(checkpoint))[0]
    e2e, engine, metas = [], [], []
    with httpx.Client(timeout=3600) as http:
        _, meta = one_request(http, url, image_b64, 0, "overhead")  # warm-up, and the tile plan
        upscaler = Upscaler(model, tile=meta["tile_size"], overlap=32, halo=32, batch_size=compute_batch)
        raster = read_image_bytes(data)
        upscale_raster(upscaler, raster, scale=4.0, steps=0)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            upscale_raster(upscaler, raster, scale=4.0, steps=0)
            engine.append(time.perf_counter() - t0)
            dt, meta = one_request(http, url, image_b64, 0, "overhead")
            e2e.append(dt / 1000)
            metas.append(meta)
    e2e_s, engine_s = statistics.median(e2e), statistics.median(engine)
    # Each service run against the engine run just before it: the machine's drift cancels out.
    paired_s = statistics.median(a - b for a, b in zip(e2e, engine, strict=True))
    stages = {
        k: round(statistics.median(m["timings_ms"][k] for m in metas), 1) for k in metas[0]["timings_ms"]
    }
    row = {
        "input": f"{size}x{size}",
        "repeats": repeats,
        "end_to_end_median_s": round(e2e_s, 3),
        "engine_median_s": round(engine_s, 3),
        "overhead_s": round(paired_s, 3),
        "overhead_pct_of_end_to_end": round(100 * paired_s / e2e_s, 1),
        "overhead_of_medians_pct": round(100 * (e2e_s - engine_s) / e2e_s, 1),
        "transformer_stages_ms": stages,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="requests per client and configuration")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--steps", default=None, help="e.g. 0,10 (default: 0 and the model's/10)")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument(
        "--plan",
        default=None,
        help="explicit runs 'size:steps:clients:repeats;...', e.g. '256:0:1:3;256:10:1:1' (not the matrix)",
    )
    parser.add_argument("--hop-repeats", type=int, default=3)
    parser.add_argument("--skip-hop", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--overhead-repeats", type=int, default=15)
    parser.add_argument(
        "--overhead-inflight", default="1,2", help="transformer --inflight-batches values (2: its default)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/serving_latency.json"
    )
    args = parser.parse_args()
    measurement = Measurement()
    from hndsr.runtime import tune_allocator

    tune_allocator()  # what every `hndsr` command does (HNDSR_MALLOC_TUNING=0 measures glibc's defaults)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tmp = Path(tempfile.mkdtemp(prefix="hndsr-bench-"))
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    load = os.getloadavg()
    results["loadavg_at_start"] = [round(v, 2) for v in load]
    if not args.skip_hop:
        from hndsr.checkpoint import save_checkpoint
        from hndsr.models.hndsr_model import HNDSR

        tiny = save_checkpoint(HNDSR(**TINY), tmp / "tiny", stages=["autoencoder"])
        pred = Proc(
            ["predictor", "--storage-uri", str(tiny), "--device", "cpu", "--max-body-mb", "512"],
            tmp / "hop-predictor.log",
        )
        try:
            results["hop"] = bench_hop(pred.url, args.hop_repeats)
        finally:
            pred.stop()

    ckpt, label = checkpoint_dir(args.checkpoint, tmp)
    results["checkpoint"] = label
    print(f"checkpoint: {label}", flush=True)
    pred = Proc(["predictor", "--storage-uri", ckpt], tmp / "predictor.log")
    trans = Proc(transformer_args(pred, "--max-sync-tiles", "256"), tmp / "transformer.log")
    try:
        health = httpx.get(pred.url + "/health").json()
        results["device"] = health["device"]
        results["model_version"] = health["model_version"]
        if args.steps is None:
            from hndsr.checkpoint import read_checkpoint_config, release_checkpoint_dir

            config = read_checkpoint_config(release_checkpoint_dir() if ckpt == "release" else ckpt)
            default = int(config["model_config"]["sampling"]["steps"])
            steps_list = [0, default or 10]
        else:
            steps_list = [int(s) for s in args.steps.split(",")]
        if args.plan:
            runs = [tuple(int(v) for v in item.split(":")) for item in args.plan.split(";") if item]
        else:
            runs = [
                (size, steps, clients, args.repeats if clients == 1 else max(1, args.repeats // 2))
                for size in (int(s) for s in args.sizes.split(","))
                for steps in steps_list
                for clients in (int(c) for c in args.concurrency.split(","))
            ]
        e2e, warmed = [], set()
        for size, steps, clients, repeats in runs:
            e2e.append(bench_e2e(trans.url, size, steps, clients, repeats, warmup=size not in warmed))
            warmed.add(size)
        results["end_to_end"] = e2e
        results["peak_rss_mb"] = {
            "predictor": round(pred.peak_rss_mb(), 1),
            "transformer": round(trans.peak_rss_mb(), 1),
        }
    finally:
        trans.stop()
        pred.stop()

    overhead = []
    if not args.skip_overhead:
        # One batch in flight (like the in-process engine) and the transformer's default (batches
        # pipelined); engine and service runs interleaved so that both see the same machine.
        pred = Proc(["predictor", "--storage-uri", ckpt], tmp / "predictor-overhead.log")
        try:
            compute_batch = int(httpx.get(pred.url + "/health").json()["compute_batch"])
            for inflight in (int(v) for v in args.overhead_inflight.split(",")):
                trans = Proc(
                    transformer_args(pred, "--inflight-batches", str(inflight)),
                    tmp / f"transformer-overhead-{inflight}.log",
                )
                try:
                    for size in (int(s) for s in args.sizes.split(",")):
                        row = bench_overhead(trans.url, ckpt, size, args.overhead_repeats, compute_batch)
                        overhead.append({"inflight_batches": inflight} | row)
                finally:
                    trans.stop()
        finally:
            pred.stop()
    results["serving_overhead"] = overhead
    results["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    measurement.write("serving_latency", results, path=args.json)


if __name__ == "__main__":
    main()
