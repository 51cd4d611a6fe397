"""Quality against training minutes: HNDSR (params.yaml profiles ``minutes25``/``minutes50`` and the
release recipe) beside the plain-CNN baseline (benchmarks/baseline_cnn.py) on the same data, patches,
degradation and evaluation code. x4 deterministic Y-PSNR gain over bicubic on the held-out split.

    python benchmarks/quality_vs_minutes.py [--hndsr 25 50] [--baseline 25 50] [--release hndsr/release]

Trains what is missing (one run at a time: give it a quiet machine, ~2.5 h for all four points),
reuses finished runs (runs/minutes<M>, benchmarks/results/baseline_cnn_<M>min.json), and writes
benchmarks/results/quality_vs_minutes.{json,png}. The release point is read from the shipped
checkpoint's evaluation.json and its training wall time from its metadata.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import Measurement, read_result  # noqa: E402

from hndsr.checkpoint import CONFIG_FILE, load_checkpoint  # noqa: E402
from hndsr.config import load_params  # noqa: E402
from hndsr.data import images_in_split  # noqa: E402
from hndsr.evaluation import evaluate_images  # noqa: E402
from hndsr.inference import Upscaler  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REQUIRED_MARGIN_DB = 0.4


def training_minutes(config: dict[str, Any]) -> float:
    """Wall time of the stages' training loops (validation included), from the checkpoint metadata."""
    meta = config.get("metadata", {})
    seconds = [
        meta.get(s, {}).get("final_metrics", {}).get("seconds") or 0.0 for s in config.get("stages", [])
    ]
    return sum(seconds) / 60.0


def x4_gain(row: dict[str, Any]) -> float:
    return float(row["model"]["psnr_y"] - row["bicubic"]["psnr_y"])


def hndsr_point(minutes: int, data: Path, split: str) -> dict[str, Any]:
    out = RESULTS / f"hndsr_{minutes}min.json"
    if out.is_file():
        return dict(read_result(out))
    measurement = Measurement()
    run = ROOT / "runs" / f"minutes{minutes}"
    cmd = [
        str(Path(sys.executable).parent / "hndsr"),
        "train",
        "--stage",
        "all",
        "--profile",
        f"minutes{minutes}",
    ]
    cmd += ["--out", str(run), "--no-progress"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    model, config = load_checkpoint(run)
    params = load_params(ROOT / "params.yaml")
    paths = images_in_split(
        data, split, val_fraction=params.data.val_fraction, test_fraction=params.data.test_fraction
    )
    result = evaluate_images(Upscaler(model), paths, scale=4.0).as_dict()
    result.pop("per_image")
    point = {
        "model": "HNDSR",
        "profile": f"minutes{minutes}",
        "minutes": training_minutes(config),
        "split": split,
        "evaluation": result,
        "gain_db": x4_gain(result),
        "checkpoint_sha256": config.get("sha256"),
    }
    measurement.write(out.stem, point, path=out)
    return point


def baseline_point(minutes: int, split: str) -> dict[str, Any]:
    out = RESULTS / f"baseline_cnn_{minutes}min.json"
    if not out.is_file():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_cnn.py"), "--minutes", str(minutes)]
        cmd += ["--split", split]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    point = dict(read_result(out))
    point["minutes"] = point["training"]["seconds"] / 60.0
    return point


def release_point(directory: Path) -> dict[str, Any]:
    config = json.loads((directory / CONFIG_FILE).read_text())
    evaluation = json.loads((directory / "evaluation.json").read_text())
    row = next(e for e in evaluation["evaluations"] if e["scale"] == 4.0 and e["steps"] == 0)
    return {
        "model": "HNDSR release",
        "minutes": training_minutes(config),
        "split": "test",
        "gain_db": x4_gain(row),
        "checkpoint_sha256": config.get("sha256"),
    }


def plot(points: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, rows, style in (
        ("HNDSR", points["hndsr"], "o-"),
        ("plain CNN baseline", points["baseline"], "s--"),
    ):
        rows = sorted(rows, key=lambda r: r["minutes"])
        ax.plot([r["minutes"] for r in rows], [r["gain_db"] for r in rows], style, label=label)
        for r in rows:
            ax.annotate(
                f"{r['gain_db']:+.2f}",
                (r["minutes"], r["gain_db"]),
                textcoords="offset points",
                xytext=(4, 6),
            )
    ax.set_xlabel("training wall time on 2 CPU cores (min)")
    ax.set_ylabel("x4 Y-PSNR gain over bicubic (dB), held-out")
    ax.set_title("Quality against training minutes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hndsr", type=int, nargs="*", default=[25, 50], help="minutes (params.yaml profiles)"
    )
    parser.add_argument("--baseline", type=int, nargs="*", default=[25, 50])
    parser.add_argument("--release", type=Path, default=ROOT / "hndsr" / "release")
    parser.add_argument(
        "--data", type=Path, default=None, help="HR folder (default: params.yaml data.train_dir)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    measurement = Measurement()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = args.data or (ROOT / load_params(ROOT / "params.yaml").data.train_dir).resolve()
    hndsr = [hndsr_point(m, data, args.split) for m in args.hndsr]
    if (args.release / CONFIG_FILE).is_file():
        hndsr.append(release_point(args.release))
    baseline = [baseline_point(m, args.split) for m in args.baseline]
    margins = []
    for b in baseline:
        # Equal minutes: the HNDSR point trained for about as long (within 20%).
        match = [h for h in hndsr if abs(h["minutes"] - b["minutes"]) <= 0.2 * b["minutes"]]
        for h in match:
            margin = h["gain_db"] - b["gain_db"]
            margins.append(
                {
                    "minutes": b["minutes"],
                    "hndsr_db": h["gain_db"],
                    "baseline_db": b["gain_db"],
                    "margin_db": margin,
                }
            )
            verdict = "meets" if margin >= REQUIRED_MARGIN_DB else "MISSES"
            print(
                f"{b['minutes']:.0f} min: HNDSR {h['gain_db']:+.3f} dB, baseline {b['gain_db']:+.3f} dB, "
                f"margin {margin:+.3f} dB ({verdict} the {REQUIRED_MARGIN_DB} dB target)"
            )
    summary = {
        "metric": "x4 deterministic Y-PSNR gain over bicubic (dB)",
        "split": args.split,
        "required_margin_db": REQUIRED_MARGIN_DB,
        "hndsr": hndsr,
        "baseline": [
            {k: v for k, v in b.items() if k in ("model", "minutes", "gain_db", "split", "parameters")}
            for b in baseline
        ],
        "margins": margins,
    }
    measurement.write("quality_vs_minutes", summary)
    plot({"hndsr": hndsr, "baseline": baseline}, RESULTS / "quality_vs_minutes.png")
    print(f"wrote {RESULTS / 'quality_vs_minutes.json'} and .png")


if __name__ == "__main__":
    main()
