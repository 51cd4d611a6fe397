"""Drift figures for the README: drift share and verdict of the drift job (Evidently, K-S per feature,
the shipped defaults) on held-out imagery, on each synthetic shift at two strengths, and on another
sensor.

Reference: the LR tiles (x2, x3, x4) of RSSCN7's train split, prepared by ``hndsr prepare``.
"Requests": LR tiles of the held-out (val + test) sources, shifted or not, and NAIP's LR tiles.

    python benchmarks/drift_figures.py [--rsscn7 ../shared/data/rsscn7] [--naip ../shared/data/naip]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hndsr.imageio import Raster, read_image
from hndsr.prepare import PrepareConfig, prepare
from monitoring.drift import DriftSettings, detect_drift, features_table, load_reference
from monitoring.features import raster_features
from monitoring.shifts import SHIFTS, STRENGTHS

ROOT = Path(__file__).resolve().parents[1]


def prepared(src: Path, out: Path) -> Path:
    config = PrepareConfig(
        tile_size=192, scales=(2.0, 3.0, 4.0), max_nodata_fraction=0.05, val_fraction=0.1, test_fraction=0.1
    )
    prepare(src, out, config)  # idempotent: a second run decodes nothing
    return out / "catalog.parquet"


def lr_tiles(catalog_path: Path, splits: set[str], n: int, seed: int) -> list[Path]:
    catalog = pd.read_parquet(catalog_path)
    rows = catalog[catalog["split"].isin(splits)]
    files = [catalog_path.parent / f for c in ("lr_x2", "lr_x3", "lr_x4") for f in rows[c].dropna()]
    random.Random(seed).shuffle(files)
    return files[:n]


def features(files: list[Path], shift: str | None = None, strength: float = 0.0) -> pd.DataFrame:
    rows = []
    for path in files:
        raster = read_image(path)
        if shift is not None:
            rgb = np.clip(SHIFTS[shift](raster.rgb(), strength), 0.0, 1.0)
            raster = Raster(data=rgb.astype(np.float32), dtype=raster.dtype)
        rows.append(raster_features(raster))
    return features_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rsscn7", type=Path, default=ROOT.parent / "shared" / "data" / "rsscn7")
    ap.add_argument("--naip", type=Path, default=ROOT.parent / "shared" / "data" / "naip")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "hndsr" / "drift-bench")
    ap.add_argument("--requests", type=int, default=300, help="request images per condition")
    args = ap.parse_args()
    settings = DriftSettings()
    t0 = time.perf_counter()
    rsscn7 = prepared(args.rsscn7, args.work / "rsscn7")
    naip = prepared(args.naip, args.work / "naip")
    reference = load_reference(str(rsscn7), settings, cache_dir=args.work / "cache")
    held_out = lr_tiles(rsscn7, {"val", "test"}, args.requests, seed=1)
    print(
        f"reference: {len(reference)} LR tiles of RSSCN7 train; {len(held_out)} requests per condition; "
        f"drift share threshold {settings.drift_share}, K-S p < {settings.threshold} "
        f"(prepared in {time.perf_counter() - t0:.0f} s)"
    )
    conditions: list[tuple[str, pd.DataFrame]] = [("unshifted held-out RSSCN7", features(held_out))]
    for name, strengths in STRENGTHS.items():
        for s in strengths:
            conditions.append((f"{name} {s:g}", features(held_out, name, s)))
    conditions.append(
        ("NAIP (another sensor)", features(lr_tiles(naip, {"train", "val", "test"}, args.requests, 2)))
    )
    print("| condition | n | drift share | detected | drifted features |\n| --- | ---: | ---: | --- | --- |")
    for label, current in conditions:
        r = detect_drift(reference, current, settings)
        print(
            f"| {label} | {r.window_size} | {r.drift_share:.2f} | {'yes' if r.detected else 'no'} | "
            f"{', '.join(r.drifted) or '-'} |"
        )


if __name__ == "__main__":
    main()
