"""Data-parallel training throughput (HR training tiles per second) for 1, 2, ... torchrun processes.

Launches ``torchrun --standalone --nproc-per-node N`` on this script for each N; every rank runs
``hndsr.training.train_stage`` (the real loop: sharded sampling, DDP, rank-0 writes) on the same
global batch, and rank 0 reports tiles/s over the steps after a warm-up epoch. Threads per rank:
the cores this process may use divided by N (what training does under torchrun).

Usage: python benchmarks/ddp_throughput.py [--procs 1 2] [--stage autoencoder|operator]
       [--batch 16] [--patch 64] [--steps 24] [--data DIR] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import Measurement

WARMUP = 4


def _images(data: str | None, out: Path) -> Path:
    """A folder of HR images: ``data`` if given, else 16 generated 256 px ones (loading is not timed)."""
    if data:
        return Path(data)
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        base = rng.normal(0, 1, (64, 64, 3)).cumsum(0).cumsum(1)
        img = np.kron(base, np.ones((4, 4, 1)))
        img = (img - img.min()) / (img.max() - img.min())
        Image.fromarray((img * 255).astype("uint8")).save(out / f"gen_{i}.png")
    return out


def worker(args: argparse.Namespace) -> None:
    import torch

    from hndsr.config import parse_params
    from hndsr.data import PatchSampler, images_in_split
    from hndsr.distributed import process_group
    from hndsr.models.hndsr_model import HNDSR
    from hndsr.training import resolve_device, seed_everything, train_stage

    stage_cfg = {"steps": args.steps + WARMUP, "batch_size": args.batch, "steps_per_epoch": WARMUP}
    params = parse_params(
        {
            "data": {"train_dir": args.data, "patch_size": args.patch},
            "train": {"device": args.device, args.stage: stage_cfg | {"warmup_steps": 1}},
        }
    )
    device = resolve_device(params.train.device)
    with process_group(device) as ctx:
        device = ctx.device(device)
        if args.threads:
            torch.set_num_threads(args.threads)
        elif ctx.distributed and device.type == "cpu":
            torch.set_num_threads(ctx.cpu_threads())
        seed_everything(0)
        paths = images_in_split(args.data, "train", val_fraction=0.0, test_fraction=0.0)
        d = params.data
        sampler = PatchSampler(
            paths, patch_size=d.patch_size, scale_min=d.scale_min, scale_max=d.scale_max, seed=0
        )
        model = HNDSR()
        marks: list[tuple[int, float]] = []
        with tempfile.TemporaryDirectory() as out:
            train_stage(
                model,
                args.stage,
                params,
                sampler,
                {},
                Path(out),
                device=device,
                callbacks=[lambda stage, epoch, step, m: marks.append((step, time.perf_counter()))],
                resume=False,
                progress=False,
                dist_ctx=ctx,
            )
        if ctx.is_main:
            (s0, t0), (s1, t1) = marks[0], marks[-1]
            result = {
                "procs": ctx.world_size,
                "threads_per_rank": torch.get_num_threads(),
                "stage": args.stage,
                "global_batch": args.batch,
                "patch": args.patch,
                "steps": s1 - s0,
                "seconds": round(t1 - t0, 3),
                "tiles_per_s": round((s1 - s0) * args.batch / (t1 - t0), 2),
            }
            print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stage", default="autoencoder", choices=["autoencoder", "operator"])
    ap.add_argument("--batch", type=int, default=16, help="global batch (split over the processes)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24, help="timed steps after a warm-up epoch")
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="threads per rank (0 = cores / processes)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/ddp_throughput.json")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    measurement = Measurement()
    with tempfile.TemporaryDirectory() as tmp:
        data = _images(args.data, Path(tmp) / "hr")
        print(f"cores available: {len(os.sched_getaffinity(0))}; data: {data}")
        rows = []
        for n in args.procs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            cmd += [__file__, "--worker", "--data", str(data), "--stage", args.stage, "--device", args.device]
            cmd += ["--batch", str(args.batch), "--patch", str(args.patch), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.exit(f"torchrun with {n} processes failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("RESULT ") :]))
    base = rows[0]["tiles_per_s"]
    print(f"{args.stage} stage, global batch {args.batch}, {args.patch} px patches, {args.device}")
    print(f"{'procs':>5} {'threads/rank':>12} {'tiles/s':>8} {'speed-up':>8}")
    for r in rows:
        speedup = r["tiles_per_s"] / base
        print(f"{r['procs']:>5} {r['threads_per_rank']:>12} {r['tiles_per_s']:>8.2f} {speedup:>8.2f}")
    print(json.dumps(rows))
    setup = {"stage": args.stage, "global_batch": args.batch, "patch": args.patch, "device": args.device}
    measurement.write("ddp_throughput", {"setup": setup | {"steps": args.steps}, "rows": rows}, path=args.out)


if __name__ == "__main__":
    main()
