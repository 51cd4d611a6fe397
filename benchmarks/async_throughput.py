"""Throughput of the asynchronous job path (a benchmark, not a test).

Starts a throw-away Redis and N ``hndsr serve worker`` processes (release checkpoint, CPU), submits
``--jobs-per-worker`` x N jobs of a 2048x2048 RGB PNG at x4 (deterministic path: 8192x8192 = 67.1 MP
of output each) and prints, for each N in ``--workers``:

- output megapixels per minute (all jobs' output / wall time from the first submission to the last
  completion) and the mean seconds of one job on a worker (decode, model, encode, store);
- the peak resident memory of each worker (``hndsr_jobs_worker_peak_rss_bytes`` from its /metrics);
- the load average before and after, since the machine may be shared.

Each worker gets ``cpu_count / N`` torch threads. The input is a mosaic of the NAIP scenes in
../shared/data/naip when present (real imagery), else a generated texture.

Usage: python benchmarks/async_throughput.py [--workers 1 2] [--jobs-per-worker 2] [--size 2048]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _results import Measurement
from PIL import Image

from lake.server import free_ports
from serving.jobs.redisserver import EmbeddedRedis
from serving.jobs.store import DONE, JobConfig, JobStore
from serving.metrics import sample_value

ROOT = Path(__file__).resolve().parents[1]
NAIP = ROOT.parent / "shared" / "data" / "naip"


def input_png(size: int) -> bytes:
    scenes = sorted(NAIP.glob("*.tif"))
    canvas = np.zeros((size, size, 3), np.uint8)
    if scenes:
        import rasterio

        y = x = 0
        row_h = 0
        for path in scenes * 8:
            if y >= size:
                break
            with rasterio.open(path) as src:
                rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
            h, w = min(rgb.shape[0], size - y), min(rgb.shape[1], size - x)
            canvas[y : y + h, x : x + w] = rgb[:h, :w]
            row_h = max(row_h, h)
            x += w
            if x >= size:
                x, y, row_h = 0, y + row_h, 0
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size]
        base = np.sin(yy / 37.0) * np.cos(xx / 53.0)
        canvas = (
            ((base[..., None] + rng.normal(0, 0.2, (size, size, 3)) + 1.5) * 70).clip(0, 255).astype(np.uint8)
        )
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def start_worker(config: JobConfig, port: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "hndsr_cli", "serve", "worker", "--redis-url", config.redis_url]
    cmd += ["--namespace", config.namespace, "--storage-uri", "release", "--device", "cpu"]
    cmd += ["--http-host", "127.0.0.1", "--http-port", str(port)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("worker not ready")


def peak_rss(port: int) -> float:
    try:
        return sample_value(
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text, "hndsr_jobs_worker_peak_rss_bytes"
        )
    except KeyError:
        return float("nan")


def run(redis_url: str, workers: int, jobs: int, data: bytes, scale: float, tmp: Path) -> dict[str, object]:
    config = JobConfig(redis_url=redis_url, namespace=f"bench:{workers}", visibility_timeout_s=600.0)
    store = JobStore(config)
    threads = max(1, (os.cpu_count() or 1) // workers)
    ports = free_ports(workers)
    logs = [tmp / f"worker-{workers}-{i}.log" for i in range(workers)]
    procs = [start_worker(config, p, threads, log) for p, log in zip(ports, logs, strict=True)]
    try:
        for p, proc, log in zip(ports, procs, logs, strict=True):
            wait_ready(p, proc, log)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        ids = [
            store.submit(data, {"scale": scale, "steps": 0, "seed": 0, "output_format": "png"}).id
            for _ in range(jobs)
        ]
        records = [store.wait(i, timeout_s=3600, poll_s=0.5) or {} for i in ids]
        wall = time.perf_counter() - t0
        if any(r.get("status") != DONE for r in records):
            raise RuntimeError(f"jobs failed: {[r.get('error') for r in records]}")
        out_mp = sum(int(r["width"]) * int(r["height"]) for r in records) / 1e6
        return {
            "workers": workers,
            "torch_threads_per_worker": threads,
            "jobs": jobs,
            "output_mp_per_job": round(out_mp / jobs, 1),
            "wall_s": round(wall, 1),
            "output_mp_per_min": round(out_mp / wall * 60.0, 1),
            "mean_job_s_on_worker": round(sum(float(r["seconds"]) for r in records) / jobs, 1),
            "result_mb_per_job": round(sum(int(r["result_bytes"]) for r in records) / jobs / 1e6, 1),
            "peak_rss_gb_per_worker": [round(peak_rss(p) / 1e9, 2) for p in ports],
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs-per-worker", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/async_throughput.json"
    )
    args = parser.parse_args()
    measurement = Measurement()
    data = input_png(args.size)
    print(
        f"input {args.size}x{args.size} PNG ({len(data) / 1e6:.1f} MB) at x{args.scale:g}, "
        f"{os.cpu_count()} CPUs"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis_server:
        for n in args.workers:
            result = run(redis_server.url, n, n * args.jobs_per_worker, data, args.scale, Path(tmp))
            print(json.dumps(result), flush=True)
            rows.append(result)
    setup = {"size": args.size, "scale": args.scale, "input_png_bytes": len(data)}
    measurement.write("async_throughput", {"setup": setup, "rows": rows}, path=args.out)


if __name__ == "__main__":
    main()
