"""Drift figures for the README: drift share and verdict of the drift job (Evidently, the shipped
defaults) on held-out imagery, on each synthetic shift at two strengths, and on another sensor.

Reference: the LR tiles (x2, x3, x4) of RSSCN7's train split, prepared by ``hndsr prepare`` (at most
5000, the job's default). Requests are realistic, independent images: **one request per held-out
image** (RSSCN7's val + test sources): one random 192 px tile of it, downsampled by a random scale
in [2, 4] (the evaluation protocol's antialiased bicubic) and quantised to 8 bits like an uploaded
PNG; the shifts are applied to that request image. NAIP: one request per prepared tile (distinct
ground patches of ten acquisitions). The table also gives the share under a forced K-S test (the
former default) for comparison.

    python benchmarks/drift_figures.py [--rsscn7 ../shared/data/rsscn7] [--naip ../shared/data/naip]
        [--stattest auto] [--stattest-threshold T]

Prepared data and the reference features are cached under ``--work`` (preparation is skipped when a
catalog is already there: it took 16 min on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _results import Measurement

from hndsr.image_read import read_image
from hndsr.prepare import PrepareConfig, prepare
from hndsr.raster import Raster
from hndsr.resample import degrade
from monitoring.drift.detection import detect_drift
from monitoring.drift.reference import features_table, load_reference
from monitoring.drift.settings import DriftSettings
from monitoring.features import raster_features
from monitoring.shifts import SHIFTS, STRENGTHS

ROOT = Path(__file__).resolve().parents[1]


def prepared(src: Path, out: Path) -> Path:
    catalog = out / "catalog.parquet"
    if catalog.is_file():  # prepared before: reuse (prepare() would still hash every source)
        return catalog
    config = PrepareConfig(
        tile_size=192, scales=(2.0, 3.0, 4.0), max_nodata_fraction=0.05, val_fraction=0.1, test_fraction=0.1
    )
    prepare(src, out, config)
    return catalog


def one_tile_per_source(catalog_path: Path, splits: set[str], seed: int) -> list[Path]:
    """One random HR tile of every source in ``splits``."""
    catalog = pd.read_parquet(catalog_path)
    rows = catalog[catalog["split"].isin(splits)]
    picked = rows.groupby("source", sort=True).sample(n=1, random_state=seed)
    return [catalog_path.parent / f for f in picked["filename"]]


def all_tiles(catalog_path: Path) -> list[Path]:
    catalog = pd.read_parquet(catalog_path)
    return [catalog_path.parent / f for f in catalog["filename"]]


def request_images(hr_files: list[Path], seed: int) -> list[np.ndarray]:
    """Each HR tile downsampled by a random scale in [2, 4], quantised to 8 bits."""
    rng = np.random.default_rng(seed)
    out = []
    for path in hr_files:
        hr = torch.from_numpy(read_image(path).rgb().astype(np.float32))
        lr = degrade(hr, float(rng.uniform(2.0, 4.0))).clamp(0, 1).numpy()
        out.append((np.round(lr * 255.0) / 255.0).astype(np.float32))
    return out


def features(images: list[np.ndarray], shift: str | None = None, strength: float = 0.0) -> pd.DataFrame:
    rows = []
    for rgb in images:
        if shift is not None:
            rgb = np.clip(SHIFTS[shift](rgb, strength), 0.0, 1.0)
        rows.append(raster_features(Raster(data=np.ascontiguousarray(rgb, dtype=np.float32), dtype="uint8")))
    return features_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rsscn7", type=Path, default=ROOT.parent / "shared" / "data" / "rsscn7")
    ap.add_argument("--naip", type=Path, default=ROOT.parent / "shared" / "data" / "naip")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "hndsr" / "drift-bench")
    ap.add_argument("--stattest", default=DriftSettings.stattest)
    ap.add_argument("--stattest-threshold", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/drift_figures.json")
    args = ap.parse_args()
    measurement = Measurement()
    settings = DriftSettings(stattest=args.stattest, stattest_threshold=args.stattest_threshold)
    ks = DriftSettings(stattest="ks", stattest_threshold=0.05)
    t0 = time.perf_counter()
    rsscn7 = prepared(args.rsscn7, args.work / "rsscn7")
    naip = prepared(args.naip, args.work / "naip")
    reference = load_reference(str(rsscn7), settings, cache_dir=args.work / "cache")
    held_out = request_images(one_tile_per_source(rsscn7, {"val", "test"}, args.seed), args.seed)
    naip_requests = request_images(all_tiles(naip), args.seed + 1)
    print(
        f"reference: {len(reference)} LR tiles of RSSCN7 train; requests: one per held-out image "
        f"({len(held_out)}), one per NAIP tile ({len(naip_requests)}); stattest {settings.stattest}"
        f"{'' if settings.stattest_threshold is None else f' threshold {settings.stattest_threshold:g}'}, "
        f"drift share {settings.drift_share} ({time.perf_counter() - t0:.0f} s to load)"
    )
    conditions: list[tuple[str, pd.DataFrame]] = [("unshifted held-out RSSCN7", features(held_out))]
    for name, strengths in STRENGTHS.items():
        for s in strengths:
            conditions.append((f"{name} {s:g}", features(held_out, name, s)))
    conditions.append(("NAIP (another sensor)", features(naip_requests)))
    print(
        "| condition | n | drift share | detected | drifted features | K-S share |\n"
        "| --- | ---: | ---: | --- | --- | ---: |"
    )
    rows = []
    for label, current in conditions:
        r = detect_drift(reference, current, settings)
        old = detect_drift(reference, current, ks)
        rows.append(
            {
                "condition": label,
                "n": r.window_size,
                "drift_share": r.drift_share,
                "detected": r.detected,
                "drifted": list(r.drifted),
                "ks_drift_share": old.drift_share,
            }
        )
        print(
            f"| {label} | {r.window_size} | {r.drift_share:.2f} | {'yes' if r.detected else 'no'} | "
            f"{', '.join(r.drifted) or '-'} | {old.drift_share:.2f} |"
        )
    print(f"{time.perf_counter() - t0:.0f} s in all")
    setup = {
        "stattest": settings.stattest,
        "stattest_threshold": settings.stattest_threshold,
        "drift_share_threshold": settings.drift_share,
        "seed": args.seed,
        "reference_tiles": len(reference),
    }
    measurement.write(
        "drift_figures" if args.seed == 1 else f"drift_figures_seed{args.seed}",
        {"setup": setup, "rows": rows},
        path=args.out,
    )


if __name__ == "__main__":
    main()
