"""Probes of the x4 deterministic gap (issue #2 asks for bicubic + 1.0 dB Y-PSNR on the held-out split).

Subcommands (a benchmark, not a test; release checkpoint unless --checkpoint):

  ibp       iterative back-projection after the model: sr += up(lr - down(sr)), 0-5 iterations
  ensemble  geometric self-ensemble: the mean of the outputs for 1, 2, 4 or 8 flips/transposes
  deepen    write a warm-start checkpoint whose operator has extra FNO blocks that start as the
            identity (then: hndsr train --stage operator --init-checkpoint OUT ...)

Usage:
  python benchmarks/x4_gap_probes.py ibp [--scale 4] [--data ../shared/data/rsscn7]
  python benchmarks/x4_gap_probes.py ensemble [--scale 4]
  python benchmarks/x4_gap_probes.py deepen --depth 8 --out runs/deep8/init
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import Measurement  # noqa: E402

from hndsr.checkpoint import load_checkpoint, release_checkpoint_dir, save_checkpoint  # noqa: E402
from hndsr.config import load_params  # noqa: E402
from hndsr.data import images_in_split, load_rgb  # noqa: E402
from hndsr.image_quality import border_for_scale, psnr_y  # noqa: E402
from hndsr.inference import Upscaler  # noqa: E402
from hndsr.models.hndsr_model import HNDSR  # noqa: E402
from hndsr.resample import degrade, resize  # noqa: E402
from hndsr.runtime import tune_allocator  # noqa: E402

# (flip W, flip H, transpose): the 8 symmetries of the square
TRANSFORMS = [(w, h, t) for t in (False, True) for h in (False, True) for w in (False, True)]


def _forward(x: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    if t[2]:
        x = x.transpose(-1, -2)
    if t[0]:
        x = x.flip(-1)
    if t[1]:
        x = x.flip(-2)
    return x


def _inverse(x: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    if t[1]:
        x = x.flip(-2)
    if t[0]:
        x = x.flip(-1)
    if t[2]:
        x = x.transpose(-1, -2)
    return x


def _held_out(data: Path) -> list[Path]:
    d = load_params(ROOT / "params.yaml").data
    return images_in_split(data, "test", val_fraction=d.val_fraction, test_fraction=d.test_fraction)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def probe_ibp(upscaler: Upscaler, paths: list[Path], scale: float) -> dict[str, Any]:
    border = border_for_scale(scale)
    iterations = (0, 1, 2, 3, 5)
    gains: dict[int, list[float]] = {i: [] for i in iterations}
    for path in paths:
        hr = load_rgb(path)
        lr = degrade(hr, scale)
        size = (hr.shape[-2], hr.shape[-1])
        bicubic = psnr_y(resize(lr, size).clamp(0, 1), hr, border=border)
        sr = upscaler.upscale(lr, out_size=size, steps=0)
        done = 0
        for i in iterations:
            while done < i:
                sr = (sr + resize(lr - resize(sr, lr.shape[-2:]), size)).clamp(0, 1)
                done += 1
            gains[i].append(psnr_y(sr, hr, border=border) - bicubic)
    return {f"gain_db_after_{i}_iterations": round(_mean(g), 4) for i, g in gains.items()}


def probe_ensemble(upscaler: Upscaler, paths: list[Path], scale: float) -> dict[str, Any]:
    border = border_for_scale(scale)
    counts = (1, 2, 4, 8)
    gains: dict[int, list[float]] = {n: [] for n in counts}
    for path in paths:
        hr = load_rgb(path)
        lr = degrade(hr, scale)
        h, w = hr.shape[-2], hr.shape[-1]
        bicubic = psnr_y(resize(lr, (h, w)).clamp(0, 1), hr, border=border)
        outputs = [
            _inverse(upscaler.upscale(_forward(lr, t), out_size=(w, h) if t[2] else (h, w), steps=0), t)
            for t in TRANSFORMS
        ]
        for n in counts:
            gains[n].append(psnr_y(torch.stack(outputs[:n]).mean(0), hr, border=border) - bicubic)
    return {f"gain_db_mean_of_{n}": round(_mean(g), 4) for n, g in gains.items()}


def deepen(checkpoint: Path, depth: int, out: Path) -> dict[str, Any]:
    old, config = load_checkpoint(checkpoint)
    model_config = config["model_config"]
    old_depth = int(model_config["operator"]["depth"])
    if depth <= old_depth:
        raise SystemExit(f"--depth must exceed the checkpoint's operator depth ({old_depth})")
    model_config["operator"]["depth"] = depth
    new = HNDSR(**model_config)
    new.load_state_dict(old.state_dict(), strict=False)
    for block in new.operator.blocks[old_depth:]:  # x + GELU(FiLM(0)) = x: the new blocks start as identity
        for conv in (block.mix, block.local):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
    probe = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        same = float(
            (old.render(probe, torch.tensor([4.0])) - new.render(probe, torch.tensor([4.0]))).abs().max()
        )
    meta = dict(config.get("metadata", {}))
    meta["warm_start"] = {"from_sha256": config["sha256"], "operator_depth": [old_depth, depth]}
    save_checkpoint(new, out, stages=["autoencoder", "operator"], metadata=meta)
    return {"out": str(out), "operator_depth": [old_depth, depth], "max_abs_output_change": same}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("probe", choices=("ibp", "ensemble", "deepen"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "rsscn7")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/deep8/init"))
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/x4_gap_<probe>.json"
    )
    args = parser.parse_args()
    measurement = Measurement()
    tune_allocator()
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or release_checkpoint_dir()
    if args.probe == "deepen":
        deepened = deepen(checkpoint, args.depth, args.out)
        print(json.dumps(deepened, indent=2))
        measurement.write("x4_gap_deepen", deepened, path=args.json)
        return
    paths = _held_out(args.data)
    upscaler = Upscaler(load_checkpoint(checkpoint)[0])
    probe = probe_ibp if args.probe == "ibp" else probe_ensemble
    result = {"probe": args.probe, "scale": args.scale, "n_images": len(paths)}
    result |= probe(upscaler, paths, args.scale)
    print(json.dumps(result, indent=2))
    measurement.write(f"x4_gap_{args.probe}", result, path=args.json)


if __name__ == "__main__":
    main()
