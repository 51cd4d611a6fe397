"""The plain-CNN baseline HNDSR has to beat at equal training minutes (issue: "a release checkpoint
worth serving").

8 residual blocks x 32 channels at LR resolution, two pixel-shuffle x2 steps, a bicubic skip
(0.23 M parameters), L1 loss, batches of 16 random 96 px HR patches with flips and rotations, x4
only. Data, patches and degradation are HNDSR's own (``PatchSampler``: the same train split,
antialiased bicubic down, the same augmentation), and the score comes from the same evaluation code
(``hndsr.evaluation.evaluate_images``) on the same split.

Training is budgeted in wall-clock minutes: the cosine learning-rate schedule runs on the elapsed
fraction of the budget, so the run ends on schedule whatever the machine's speed. ``--precision``
is the same choice HNDSR's recipe has (bf16 autocast or fp32), so the comparison is one of design,
not of arithmetic.

    python benchmarks/baseline_cnn.py --minutes 25 [--precision bf16] [--split test]

Writes benchmarks/results/baseline_cnn_<minutes>min.json (training log + evaluation) and the
weights to runs/baseline_cnn_<minutes>min/.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import Measurement  # noqa: E402

from hndsr.config import load_params  # noqa: E402
from hndsr.data import PatchSampler, images_in_split  # noqa: E402
from hndsr.evaluation import evaluate_images  # noqa: E402
from hndsr.resample import lr_size, resize  # noqa: E402
from hndsr.runtime import tune_allocator  # noqa: E402

SCALE = 4.0


class PlainCNN(nn.Module):
    """LR (B, 3, h, w) + its bicubic upsample (B, 3, 4h, 4w) -> SR (B, 3, 4h, 4w)."""

    def __init__(self, channels: int = 32, blocks: int = 8) -> None:
        super().__init__()
        c = channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1))
            for _ in range(blocks)
        )
        self.body_tail = nn.Conv2d(c, c, 3, padding=1)
        self.upsample = nn.Sequential(
            nn.Conv2d(c, 4 * c, 3, padding=1),
            nn.PixelShuffle(2),
            nn.Conv2d(c, 4 * c, 3, padding=1),
            nn.PixelShuffle(2),
            nn.Conv2d(c, 3, 3, padding=1),
        )

    def forward(self, lr: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        head = self.head(lr)
        h = head
        for block in self.body:
            h = h + block(h)
        return up + self.upsample(self.body_tail(h) + head)


class PlainCNNUpscaler:
    """The evaluation code's upscaler interface (``upscale(lr, scale=, out_size=, ...)``), x4 only."""

    def __init__(self, model: PlainCNN) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def upscale(self, lr: torch.Tensor, *, scale: float, out_size: tuple[int, int], **_: Any) -> torch.Tensor:
        h, w = int(lr.shape[-2]), int(lr.shape[-1])
        if scale != SCALE or out_size != (4 * h, 4 * w):
            raise ValueError(f"the baseline CNN is x4 only (got scale {scale}, {h}x{w} -> {out_size})")
        up = resize(lr, out_size)
        return self.model(lr[None], up[None])[0].clamp(0.0, 1.0)


def train(
    model: PlainCNN, sampler: PatchSampler, *, minutes: float, lr: float, batch: int, bf16: bool
) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    budget = minutes * 60.0
    warmup = 100
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    step, running = 0, 0.0
    while (elapsed := time.perf_counter() - started) < budget:
        cosine = 0.5 * (1.0 + math.cos(math.pi * elapsed / budget))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * cosine)
        b = sampler.sample(batch)
        lr_img = resize(b.hr, lr_size(tuple(b.hr.shape[-2:]), SCALE), antialias=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sr = model(lr_img, b.up)
        loss = F.l1_loss(sr.float(), b.hr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running += loss.item()
        if step % 500 == 0:
            log.append({"step": step, "seconds": round(elapsed, 1), "l1": running / 500})
            print(f"step {step}  {elapsed / 60:.1f} min  l1 {running / 500:.4f}", flush=True)
            running = 0.0
    return {"steps": step, "seconds": time.perf_counter() - started, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--data", default=None, help="HR folder (default: params.yaml data.train_dir)")
    parser.add_argument("--split", default="test", help="split scored after training (test = held out)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON (default benchmarks/results/baseline_cnn_<m>min.json)"
    )
    args = parser.parse_args()
    measurement = Measurement()
    tune_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    params = load_params(ROOT / "params.yaml")
    d = params.data
    data = args.data or str((ROOT / d.train_dir).resolve())
    split = {"val_fraction": d.val_fraction, "test_fraction": d.test_fraction}
    sampler = PatchSampler(
        images_in_split(data, "train", **split),
        patch_size=args.patch,
        scale_min=SCALE,
        scale_max=SCALE,
        seed=args.seed,
    )
    model = PlainCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"plain CNN, {n_params / 1e6:.3f} M parameters, {args.minutes:g} min, {args.precision}", flush=True)
    training = train(
        model, sampler, minutes=args.minutes, lr=args.lr, batch=args.batch, bf16=args.precision == "bf16"
    )
    tag = f"baseline_cnn_{args.minutes:g}min"
    weights = ROOT / "runs" / tag / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    paths = images_in_split(data, args.split, **split)
    result = evaluate_images(PlainCNNUpscaler(model), paths, scale=SCALE)
    out = {
        "model": "plain CNN baseline",
        "parameters": n_params,
        "minutes": args.minutes,
        "precision": args.precision,
        "recipe": {"lr": args.lr, "batch": args.batch, "patch": args.patch, "loss": "l1", "scale": SCALE},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "torch": torch.__version__,
        "training": training,
        "split": args.split,
        "evaluation": result.as_dict(),
        "gain_db": result.model["psnr_y"] - result.bicubic["psnr_y"],
        "weights": str(weights.relative_to(ROOT)),
    }
    target = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{tag}.json"
    measurement.write(tag, out, path=target)
    print(
        f"x4 {args.split}: model {result.model['psnr_y']:.3f} dB, bicubic {result.bicubic['psnr_y']:.3f} dB, "
        f"gain {out['gain_db']:+.3f} dB over {result.n_images} images -> {target}"
    )


if __name__ == "__main__":
    main()
