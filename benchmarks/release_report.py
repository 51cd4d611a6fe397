"""Evaluate a trained run on the held-out split and (with --install) ship it as the release checkpoint
with a model card generated from the measured figures.

Usage:
  python benchmarks/release_report.py --run runs/release --data ../shared/data/rsscn7 \
      [--diffusion 10:1.0 --diffusion 20:0.5] [--default-steps 0 --default-strength 1.0] [--install]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, release_checkpoint_dir
from hndsr.config import Params, load_params
from hndsr.data import images_in_split
from hndsr.evaluation import evaluate_images
from hndsr.inference import Upscaler
from hndsr.lpips_weights import load_lpips
from hndsr.model_card import render_model_card

DATA_TEXT = """Trained on RSSCN7 (Zou et al., IEEE GRSL 2015; 2,800 Google Earth RGB scenes of 400x400 px in
7 classes, of which the 700-image copy in ../shared/data/rsscn7 was used). Split by the sha256 of
each file: {train} train, {val} validation, {test} held-out test images (test_fraction 0.10,
val_fraction 0.05 in params.yaml); the test images were never trained on."""
LICENCE_TEXT = """RSSCN7 is distributed for research use without a stated licence: the images are not
redistributed here, only weights trained on them. Users shipping this checkpoint commercially should
retrain on imagery they hold rights to (`hndsr train` on any folder of HR images)."""


def regression_sample(per_image: list[dict], data_dir: Path, n: int) -> dict[str, object]:
    """The x4 deterministic Y-PSNR of the first ``n`` held-out images, for a test that re-scores the
    shipped checkpoint on them (a wrong install, a broken loader or an inference change shows up)."""
    rows = per_image[:n]
    return {
        "scale": 4.0,
        "steps": 0,
        "images": [Path(r["path"]).relative_to(data_dir).as_posix() for r in rows],
        "model_psnr_y": [r["model"]["psnr_y"] for r in rows],
        "bicubic_psnr_y": [r["bicubic"]["psnr_y"] for r in rows],
    }


def training_summary(config: dict, params: Params) -> str:
    """Wall time per stage (from the checkpoint's metadata) and the data recipe (params.yaml)."""
    meta = config.get("metadata", {})
    seconds = {s: meta.get(s, {}).get("final_metrics", {}).get("seconds") for s in config.get("stages", [])}
    parts = [f"{s} {v / 60:.1f} min" for s, v in seconds.items() if v is not None]
    total = sum(v for v in seconds.values() if v is not None)
    return (
        "### Training run\n\n"
        f"One uninterrupted `make release-train` on 2 CPU cores (AMD EPYC Zen 4, bf16 autocast): "
        f"{', '.join(parts)}; **{total / 60:.0f} min** of training in all (validation included).\n\n"
        "Data recipe (params.yaml `data`):\n\n```json\n"
        + json.dumps(asdict(params.data), indent=2)
        + "\n```\n\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/release"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/rsscn7"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--scales", type=float, nargs="*", default=[2.0, 3.0, 4.0])
    parser.add_argument("--diffusion", action="append", default=[], help="STEPS:STRENGTH at x4, repeatable")
    parser.add_argument("--diffusion-scales", type=float, nargs="+", default=[4.0])
    parser.add_argument("--default-steps", type=int, default=0)
    parser.add_argument("--default-strength", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="evaluation JSON (default: RUN/release_eval.json)"
    )
    parser.add_argument("--install", action="store_true", help="copy into hndsr/release with MODEL_CARD.md")
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the card's results")
    parser.add_argument(
        "--regression-images",
        type=int,
        default=4,
        help="held-out images whose x4 scores are recorded for the shipped-checkpoint regression test",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    params = load_params("params.yaml")
    fr = params.data
    counts = {
        s: len(images_in_split(args.data, s, val_fraction=fr.val_fraction, test_fraction=fr.test_fraction))
        for s in ("train", "val", "test")
    }
    paths = images_in_split(
        args.data, args.split, val_fraction=fr.val_fraction, test_fraction=fr.test_fraction
    )
    if args.limit:
        paths = paths[: args.limit]
    model, config = load_checkpoint(args.run)
    upscaler = Upscaler(model)
    lpips = load_lpips()
    evaluations = []
    regression: dict[str, object] = {}
    plan = [(s, 0, 1.0) for s in args.scales]
    for spec in args.diffusion:
        steps, strength = spec.split(":")
        plan += [(s, int(steps), float(strength)) for s in args.diffusion_scales]
    for scale, steps, strength in plan:
        t0 = time.perf_counter()
        res = evaluate_images(
            upscaler, paths, scale=scale, steps=steps, strength=strength, seed=0, lpips_model=lpips
        )
        row = res.as_dict()
        per_image = row.pop("per_image")
        if scale == 4.0 and steps == 0:
            regression = regression_sample(per_image, args.data, args.regression_images)
        row["strength"] = strength if steps else None
        evaluations.append(row)
        m, b = row["model"], row["bicubic"]
        print(
            f"x{scale:g} steps={steps} strength={strength:g}: PSNR-Y {m['psnr_y']:.3f} vs {b['psnr_y']:.3f} "
            f"({m['psnr_y'] - b['psnr_y']:+.3f}) SSIM-Y {m['ssim_y']:.4f} vs {b['ssim_y']:.4f} "
            f"LPIPS {m['lpips']:.4f} vs {b['lpips']:.4f} [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    out = args.out or args.run / "release_eval.json"
    out.write_text(
        json.dumps(
            {"split_counts": counts, "evaluations": evaluations, "regression_check": regression}, indent=2
        )
        + "\n"
    )
    print(f"wrote {out}")
    if not args.install:
        return
    target = release_checkpoint_dir()
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.run / WEIGHTS_FILE, target / WEIGHTS_FILE)
    config["model_config"]["sampling"] = {
        "steps": args.default_steps,
        "strength": args.default_strength,
        "eta": 0.0,
    }
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (target / "evaluation.json").write_text(out.read_text())
    notes = training_summary(config, params) + (args.notes.read_text() if args.notes else "")
    card = render_model_card(
        config,
        evaluations,
        title="HNDSR release checkpoint",
        data=DATA_TEXT.format(**counts),
        licence=LICENCE_TEXT,
        reproduce=(
            "make release-train   # = hndsr train --stage all --out runs/release (params.yaml base values)\n"
            "python benchmarks/release_report.py --run runs/release --data ../shared/data/rsscn7 "
            + " ".join(f"--diffusion {d}" for d in args.diffusion)
            + f" --default-steps {args.default_steps} --default-strength {args.default_strength:g} \\\n"
            + "    --diffusion-scales "
            + " ".join(f"{s:g}" for s in args.diffusion_scales)
            + (f" --notes {args.notes}" if args.notes else "")
            + " --install"
        ),
        notes=notes,
    )
    (target / "MODEL_CARD.md").write_text(card)
    load_checkpoint(target)  # the shipped copy must verify
    print(f"installed the release checkpoint in {target}")


if __name__ == "__main__":
    main()
