"""Short, time-budgeted training probes of model designs (issue #23), scored on the validation split.

Each probe starts from the same autoencoder checkpoint, trains the operator stage (the deterministic
path end to end, as `make release-train` does) for a fixed number of wall-clock minutes with a cosine
schedule over that time, and scores Y-PSNR over bicubic at x2/x3/x4 on the validation images. Run
probes in pairs with one thread each, so both see the same machine.

    python benchmarks/design_probe.py --name depth16 --init runs/probe_ae --minutes 20 --threads 1 \
        --model '{"operator": {"depth": 16}}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import RESULTS as _ALL  # noqa: E402
from _results import Measurement  # noqa: E402

from hndsr.checkpoint import load_checkpoint  # noqa: E402
from hndsr.config import load_params  # noqa: E402
from hndsr.data import Batch, PatchSampler, images_in_split, validation_batches  # noqa: E402
from hndsr.evaluation import evaluate_images  # noqa: E402
from hndsr.inference import Upscaler  # noqa: E402
from hndsr.losses import stage_loss  # noqa: E402
from hndsr.models.hndsr_model import HNDSR  # noqa: E402
from hndsr.training import validate  # noqa: E402

RESULTS = _ALL / "design_probes"


def score(model: HNDSR, val: dict[float, Batch]) -> dict[str, float]:
    """Y-PSNR gain over bicubic per scale, by the training loop's own validation."""
    psnr = validate(model, "operator", val, torch.device("cpu"))
    return {f"x{s:g}": round(psnr[f"val_psnr_y_x{s:g}"] - psnr[f"val_bicubic_psnr_y_x{s:g}"], 4) for s in val}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--init", required=True, help="checkpoint whose autoencoder every probe starts from")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="{}", help="JSON overrides of the model config")
    ap.add_argument("--train", default="{}", help="JSON overrides of train.operator")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--scales", type=float, nargs=2, default=None, help="training scales (default: params)")
    ap.add_argument("--scale-power", type=float, default=0.0, help="training scale density (default: params)")
    ap.add_argument("--fixed-lr-patch", action="store_true", help="HR patch follows the scale")
    ap.add_argument("--evals", type=int, default=4, help="validation points along the run")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    run = Measurement()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = load_params(args.params)
    cfg = dataclasses.replace(params.train.operator, **json.loads(args.train))
    d = params.data
    split = {"val_fraction": d.val_fraction, "test_fraction": d.test_fraction}
    sampler = PatchSampler(
        images_in_split(d.train_dir, "train", **split),
        patch_size=args.patch,
        scale_min=args.scales[0] if args.scales else d.scale_min,
        scale_max=args.scales[1] if args.scales else d.scale_max,
        scale_power=args.scale_power or d.scale_power,
        fixed_lr_patch=args.fixed_lr_patch,
        seed=0,
    )
    val = validation_batches(
        images_in_split(d.train_dir, "val", **split), crop=d.val_crop, scales=(2.0, 3.0, 4.0), limit=0
    )
    init, _ = load_checkpoint(args.init)
    model = HNDSR(**json.loads(args.model))
    model.autoencoder.load_state_dict(init.autoencoder.state_dict())
    model.train()
    trainable = list(model.operator.parameters()) + list(model.autoencoder.parameters())
    for p in model.unet.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = args.minutes * 60.0
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    curve = []
    started = time.perf_counter()
    step, train_s = 0, 0.0
    while train_s < budget:
        t0 = time.perf_counter()
        progress = train_s / budget
        cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * cosine
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _ = stage_loss(model, "operator", sampler.sample(cfg.batch_size), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        step += 1
        train_s += time.perf_counter() - t0  # validation time is not training time
        if marks and train_s >= marks[0]:
            marks.pop(0)
            point = {"minutes": round(train_s / 60, 2), "step": step, **score(model, val)}
            curve.append(point)
            print(args.name, point, flush=True)
    # The whole validation images at x4 through the serving engine: the protocol of baseline_cnn.py.
    full = evaluate_images(Upscaler(model.eval()), images_in_split(d.train_dir, "val", **split), scale=4.0)
    full_gain = full.as_dict()["model"]["psnr_y"] - full.as_dict()["bicubic"]["psnr_y"]
    print(args.name, "val split x4 (whole images):", round(full_gain, 4), flush=True)
    result = {
        "val_split_x4_gain_db": round(full_gain, 4),
        "name": args.name,
        "model": json.loads(args.model),
        "train": json.loads(args.train),
        "patch": args.patch,
        "fixed_lr_patch": args.fixed_lr_patch,
        "scale_power": args.scale_power or d.scale_power,
        "threads": args.threads,
        "minutes": args.minutes,
        "steps": step,
        "ms_per_step": round(1000 * train_s / step, 1),
        "params_operator_m": round(sum(p.numel() for p in model.operator.parameters()) / 1e6, 3),
        "wall_s": round(time.perf_counter() - started, 1),
        "curve": curve,
        "final": curve[-1] if curve else {},
    }
    out = run.write(f"design_probe_{args.name}", result, path=RESULTS / f"{args.name}.json")
    print(json.dumps(result["final"]), "->", out)


if __name__ == "__main__":
    main()
