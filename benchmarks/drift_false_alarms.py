"""False-alarm and detection rates of the drift job's verdict over many windows (issue 19).

The drift job must not cry wolf on unchanged imagery and must still catch real shifts. This measures
both as rates over ``--windows`` windows per condition, with the job's own verdict function
(``monitoring.drift.detection.detect_drift``, the shipped defaults: ``wasserstein_ks``, drift share 0.3, the
reference-calibrated thresholds) with and without the calibration.

Data (``../shared/data``, read directly, nothing prepared): RSSCN7's 700 images split by a hash of
the file name, 80% reference and 20% held out. Reference: like ``hndsr prepare`` + the job's
reference, four 192 px tiles of every reference image, downsampled x2, x3 and x4 (antialiased
bicubic), one source per image. A window: ``--window`` requests, each a different held-out image, one
random 192 px tile of it at a random scale in [2, 4], quantised to 8 bits like an uploaded PNG; each
held-out image has ``--variants`` precomputed requests and a window draws one per image. Conditions:
unshifted, darken/blur/haze at the README's two strengths (applied to the request), and NAIP tiles
(another sensor: 1 m USDA orthophotos). ``--few-sources`` repeats the unshifted case against a
reference of 19 source images, the size of ``make run``'s sample (where the false alarm was seen).

    nice python benchmarks/drift_false_alarms.py [--windows 200] [--window 60] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from _results import Measurement

from hndsr.image_read import read_image
from hndsr.raster import Raster
from hndsr.resample import degrade
from monitoring.drift.detection import detect_drift
from monitoring.drift.reference import features_table
from monitoring.drift.settings import DriftSettings
from monitoring.features import raster_features
from monitoring.shifts import SHIFTS, STRENGTHS

ROOT = Path(__file__).resolve().parents[1]
TILE = 192
#: The shifts the issue's >= 95% detection applies to: the README's strong strengths and another sensor.
STRONG = {"darken 0.35", "blur 1.5", "haze 0.35", "NAIP (another sensor)"}


def held_out(path: Path) -> bool:
    return int(hashlib.sha256(path.name.encode()).hexdigest(), 16) % 5 == 0


def rgb_of(path: Path) -> np.ndarray:
    return read_image(path).rgb().astype(np.float32)


def features(rgb: np.ndarray) -> dict[str, float]:
    return raster_features(Raster(data=np.ascontiguousarray(rgb, dtype=np.float32), dtype="uint8"))


def lr_of(hr: np.ndarray, scale: float) -> np.ndarray:
    lr = degrade(torch.from_numpy(hr), scale).clamp(0, 1).numpy()
    return (np.round(lr * 255.0) / 255.0).astype(np.float32)


def reference_table(paths: list[Path]) -> pd.DataFrame:
    """Four corner tiles of each image at x2, x3, x4 (prepare's tiling of a 400 px image)."""
    rows = []
    for path in paths:
        rgb = rgb_of(path)
        h, w = rgb.shape[1:]
        for y in (0, h - TILE):
            for x in (0, w - TILE):
                tile = rgb[:, y : y + TILE, x : x + TILE]
                for scale in (2.0, 3.0, 4.0):
                    rows.append(features(lr_of(tile, scale)) | {"source": path.name})
    return features_table(rows)


def requests(images: list[np.ndarray], variants: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Per image, ``variants`` LR requests: a random 192 px tile at a random scale in [2, 4]."""
    out = []
    for rgb in images:
        h, w = rgb.shape[1:]
        mine = []
        for _ in range(variants):
            y, x = int(rng.integers(0, h - TILE + 1)), int(rng.integers(0, w - TILE + 1))
            mine.append(lr_of(rgb[:, y : y + TILE, x : x + TILE], float(rng.uniform(2.0, 4.0))))
        out.append(mine)
    return out


def feature_pool(
    reqs: list[list[np.ndarray]], shift: str | None, strength: float
) -> list[list[dict[str, float]]]:
    pool = []
    for mine in reqs:
        rows = []
        for lr in mine:
            if shift is not None:
                lr = np.clip(SHIFTS[shift](lr, strength), 0.0, 1.0)
            rows.append(features(lr))
        pool.append(rows)
    return pool


def rates(
    reference: pd.DataFrame,
    pool: list[list[dict[str, float]]],
    settings: DriftSettings,
    *,
    windows: int,
    window: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    flagged, shares, drifted_counts = 0, [], {}
    for _ in range(windows):
        images = rng.choice(len(pool), min(window, len(pool)), replace=False)
        rows = [pool[i][int(rng.integers(0, len(pool[i])))] for i in images]
        result = detect_drift(reference, features_table(rows), settings, evidently=False)
        flagged += int(result.detected)
        shares.append(result.drift_share)
        for f in result.drifted:
            drifted_counts[f] = drifted_counts.get(f, 0) + 1
    return {
        "windows": windows,
        "window_size": min(window, len(pool)),
        "flagged": flagged,
        "flagged_rate": flagged / windows,
        "drift_share_median": float(np.median(shares)),
        "drift_share_p95": float(np.quantile(shares, 0.95)),
        "feature_drifted_counts": dict(sorted(drifted_counts.items())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rsscn7", type=Path, default=ROOT.parent / "shared" / "data" / "rsscn7")
    ap.add_argument("--naip", type=Path, default=ROOT.parent / "shared" / "data" / "naip")
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/drift_false_alarms.json"
    )
    args = ap.parse_args()
    measurement = Measurement()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    paths = sorted(args.rsscn7.rglob("*.jpg"))
    ref_paths = [p for p in paths if not held_out(p)]
    test_paths = [p for p in paths if held_out(p)]
    reference = reference_table(ref_paths)
    few = sorted({p.name for p in ref_paths})
    few_sources = [few[i] for i in np.random.default_rng(0).choice(len(few), 19, replace=False)]
    reference_few = reference[reference["source"].isin(few_sources)].reset_index(drop=True)
    print(
        f"reference: {len(reference)} LR tiles of {len(ref_paths)} images ({time.perf_counter() - t0:.0f} s)"
    )
    test_reqs = requests([rgb_of(p) for p in test_paths], args.variants, rng)
    naip_tiles = []
    for path in sorted(args.naip.glob("*.tif")):
        rgb = rgb_of(path)
        h, w = rgb.shape[1:]
        naip_tiles += [
            rgb[:, y : y + TILE, x : x + TILE]
            for y in range(0, h - TILE + 1, TILE)
            for x in range(0, w - TILE + 1, TILE)
        ]
    naip_reqs = requests(naip_tiles, args.variants, rng)
    conditions: list[tuple[str, str, pd.DataFrame, list[list[dict[str, float]]]]] = [
        ("unshifted held-out RSSCN7", "false_alarm", reference, feature_pool(test_reqs, None, 0.0))
    ]
    for name, strengths in STRENGTHS.items():
        for s in strengths:
            conditions.append((f"{name} {s:g}", "detection", reference, feature_pool(test_reqs, name, s)))
    conditions.append(("NAIP (another sensor)", "detection", reference, feature_pool(naip_reqs, None, 0.0)))
    conditions.append(
        ("unshifted held-out RSSCN7, reference of 19 sources", "false_alarm", reference_few, conditions[0][3])
    )
    print(f"requests ready ({time.perf_counter() - t0:.0f} s)")
    results = []
    for label, kind, ref, pool in conditions:
        for calibrate in (True, False):
            settings = DriftSettings(calibrate=calibrate)
            r = rates(
                ref,
                pool,
                settings,
                windows=args.windows,
                window=args.window,
                rng=np.random.default_rng(args.seed),
            )
            r |= {"condition": label, "kind": kind, "calibrated": calibrate, "reference_rows": len(ref),
                  "reference_sources": int(ref["source"].nunique()), "pool_images": len(pool)}  # fmt: skip
            results.append(r)
            print(
                f"| {label} | {'calibrated' if calibrate else 'fixed 0.25'} | {r['window_size']} | "
                f"{r['flagged_rate']:.3f} | {r['drift_share_median']:.2f} |",
                flush=True,
            )
    ok_false = all(
        r["flagged_rate"] <= 0.05 for r in results if r["kind"] == "false_alarm" and r["calibrated"]
    )
    ok_detect = all(
        r["flagged_rate"] >= 0.95
        for r in results
        if r["kind"] == "detection" and r["calibrated"] and r["condition"] in STRONG
    )
    measurement.write(
        "drift_false_alarms",
        {
            "settings": {k: v for k, v in DriftSettings().__dict__.items()},
            "windows_per_condition": args.windows,
            "window_size": args.window,
            "variants_per_image": args.variants,
            "seed": args.seed,
            "reference": {
                "images": len(ref_paths),
                "rows": len(reference),
                "tiles_per_image": 4,
                "scales": [2, 3, 4],
            },
            "held_out_images": len(test_paths),
            "naip_tiles": len(naip_tiles),
            "false_alarms_at_most_5_percent": ok_false,
            "strong_shifts_detected_in_95_percent": ok_detect,
            "results": results,
        },
        path=args.out,
    )
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
