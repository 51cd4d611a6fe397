"""Is the ``--samples K`` uncertainty informative? On held-out images at x4 (bicubic-downsampled LR, as
``hndsr evaluate`` does), the per-pixel std of K seeded diffusion draws against the per-pixel absolute
error of their mean (mean over R, G, B of |SR - HR|):

- Spearman's rank correlation, pooled over every pixel of every image, and the median of the
  per-image correlations (the bar of issue #21: >= 0.3);
- the mean |error| of the 10% most uncertain pixels (pooled) against the other 90%, and their ratio;
- for context, the same figures for a trivial proxy that needs no model: the gradient magnitude of
  the bicubic image (edges are where any upscaler errs); the std should at least rival it.

Raw result: benchmarks/results/uncertainty_calibration.json; figure (SR mean, |error|, std side by
side for a few images): benchmarks/results/uncertainty_calibration.png.

Usage:
  python benchmarks/uncertainty_calibration.py --data ../shared/data/rsscn7 --limit 21 [--samples 8]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import RESULTS, Measurement
from scipy.ndimage import uniform_filter
from scipy.stats import spearmanr

from hndsr.checkpoint import load_checkpoint, load_release_checkpoint
from hndsr.config import load_params
from hndsr.data import images_in_split, load_rgb
from hndsr.inference import Upscaler
from hndsr.resample import degrade, resize

TOP_FRACTION = 0.10
WINDOWS = (3, 5, 9)  # diagnostic: the variance pooled over w x w neighbours (less sampling noise)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """|grad| of the RGB mean of ``(3, H, W)``: the no-model proxy the std is compared with."""
    gy, gx = np.gradient(image.mean(axis=0))
    return np.hypot(gy, gx)


def top_vs_rest(score: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """Mean error of the ``TOP_FRACTION`` highest-scoring pixels against the rest."""
    cut = np.quantile(score, 1.0 - TOP_FRACTION)
    top = score > cut
    if not top.any():  # heavy ties at the top: take the tied pixels too
        top = score >= cut
    top_err, rest_err = float(error[top].mean()), float(error[~top].mean())
    return {
        "top_fraction": float(top.mean()),
        "top_mean_abs_error": top_err,
        "rest_mean_abs_error": rest_err,
        "ratio": top_err / rest_err,
    }


def rho(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def save_figure(rows: list[dict[str, Any]], path: Path, samples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        vmax = float(np.quantile(row["error"], 0.99))
        panels = [
            (np.moveaxis(row["sr"], 0, -1), f"{row['name']}: SR x4 (mean of {samples} draws)", {}),
            (
                row["error"],
                f"|SR - HR| (mean over RGB), rho = {row['rho']:.2f}",
                {"cmap": "magma", "vmax": vmax},
            ),
            (
                row["std"],
                f"uncertainty: std of {samples} draws (max {row['std'].max():.3f})",
                {"cmap": "magma"},
            ),
        ]
        for ax, (image, title, kw) in zip(ax_row, panels, strict=True):
            shown = ax.imshow(image, **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
            if kw:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the release checkpoint")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/rsscn7"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--strength", type=float, default=None, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=21, help="held-out images, evenly spaced (0 = all)")
    parser.add_argument("--figure-images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="uncertainty_calibration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run = Measurement()
    torch.set_num_threads(args.threads)

    fr = load_params("params.yaml").data
    paths = images_in_split(
        args.data, args.split, val_fraction=fr.val_fraction, test_fraction=fr.test_fraction
    )
    if args.limit and args.limit < len(paths):  # evenly spaced: the split is sorted by class folder
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, args.limit).round()]
    model, config = load_release_checkpoint() if args.checkpoint is None else load_checkpoint(args.checkpoint)
    upscaler = Upscaler(model)
    steps = model.default_steps if args.steps is None else args.steps
    strength = model.default_strength if args.strength is None else args.strength

    errors, stds, grads, per_image, figure_rows = [], [], [], [], []
    smoothed: dict[int, list[np.ndarray]] = {w: [] for w in WINDOWS}
    shown = set(
        np.linspace(0, len(paths) - 1, min(args.figure_images, len(paths))).round().astype(int).tolist()
    )
    started = time.perf_counter()
    for i, path in enumerate(paths):
        hr = load_rgb(path)
        lr = degrade(hr, args.scale)
        size = (int(hr.shape[1]), int(hr.shape[2]))
        out = upscaler.upscale(
            lr,
            scale=args.scale,
            out_size=size,
            steps=steps,
            strength=strength,
            seed=args.seed,
            samples=args.samples,
        ).numpy()
        sr, std = out[:3], out[3]
        error = np.abs(sr - hr.numpy()).mean(axis=0)
        grad = gradient_magnitude(resize(lr, size).clamp(0.0, 1.0).numpy())
        errors.append(error.ravel())
        stds.append(std.ravel())
        for w in WINDOWS:
            smoothed[w].append(np.sqrt(uniform_filter(std**2, size=w, mode="reflect")).ravel())
        grads.append(grad.ravel())
        r = rho(std, error)
        per_image.append(
            {
                "path": path.relative_to(args.data).as_posix(),
                "spearman_std_error": r,
                "spearman_gradient_error": rho(grad, error),
                "mean_abs_error": float(error.mean()),
                "mean_std": float(std.mean()),
                "std_vs_error_top10": top_vs_rest(std, error),
            }
        )
        if i in shown:  # spread over the classes, like the images
            figure_rows.append({"name": path.name, "sr": sr, "error": error, "std": std, "rho": r})
        logging.info("%d/%d %s: rho %.3f, mean std %.4f", i + 1, len(paths), path.name, r, std.mean())
    seconds = time.perf_counter() - started

    error_all, std_all, grad_all = np.concatenate(errors), np.concatenate(stds), np.concatenate(grads)
    result = {
        "checkpoint": str(args.checkpoint or "release"),
        "checkpoint_sha256": config.get("sha256"),
        "data": str(args.data),
        "split": args.split,
        "scale": args.scale,
        "samples": args.samples,
        "steps": steps,
        "strength": strength,
        "seed": args.seed,
        "n_images": len(paths),
        "n_pixels": int(error_all.size),
        "seconds": round(seconds, 1),
        "spearman_std_error_pooled": rho(std_all, error_all),
        "spearman_std_error_per_image_median": float(np.median([r["spearman_std_error"] for r in per_image])),
        "std_vs_error_top10": top_vs_rest(std_all, error_all),
        "baseline_gradient": {
            "spearman_pooled": rho(grad_all, error_all),
            "spearman_per_image_median": float(np.median([r["spearman_gradient_error"] for r in per_image])),
            "top10": top_vs_rest(grad_all, error_all),
        },
        "bar": {"spearman": 0.3, "met": rho(std_all, error_all) >= 0.3},
        "diagnostic_std_window_mean": {
            f"{w}x{w}": {
                "spearman_pooled": rho(np.concatenate(smoothed[w]), error_all),
                "top10": top_vs_rest(np.concatenate(smoothed[w]), error_all),
            }
            for w in WINDOWS
        },
        "mean_std": float(std_all.mean()),
        "per_image": per_image,
        "figure": f"benchmarks/results/{args.name}.png",
    }
    save_figure(figure_rows, RESULTS / f"{args.name}.png", args.samples)
    run.write(args.name, result)
    top = result["std_vs_error_top10"]
    print(
        f"n={len(paths)} x{args.scale:g} K={args.samples} steps={steps} strength={strength}: "
        f"Spearman(std, |err|) pooled {result['spearman_std_error_pooled']:.3f}, per-image median "
        f"{result['spearman_std_error_per_image_median']:.3f}; top-10% uncertain |err| "
        f"{top['top_mean_abs_error']:.4f} vs rest {top['rest_mean_abs_error']:.4f} (x{top['ratio']:.2f}); "
        f"gradient proxy pooled {result['baseline_gradient']['spearman_pooled']:.3f}; {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
