"""The drift false alarm of issue 19 on the data it was seen on: ``make run``'s prepared NEON sample
(``data/processed/catalog.parquet``: 19 train sources, 3 held-out). Reference: the job's reference of
the catalog (LR tiles x2/x3/x4 of the train split); one window: every held-out LR tile, unshifted and
with each strong shift; verdicts with the fixed 0.25 distance threshold and with the thresholds
calibrated on the reference's sources (the default). ``--min-samples`` is lowered to the window's size.

    nice python benchmarks/drift_sample_window.py [--catalog data/processed/catalog.parquet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from _results import Measurement

from hndsr.image_read import read_image
from hndsr.raster import Raster
from monitoring.drift.detection import detect_drift
from monitoring.drift.reference import features_table, reference_from_catalog
from monitoring.drift.settings import DriftSettings
from monitoring.features import raster_features
from monitoring.shifts import SHIFTS

ROOT = Path(__file__).resolve().parents[1]
STRONG = (("darken", 0.35), ("haze", 0.35), ("blur", 1.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=ROOT / "data" / "processed" / "catalog.parquet")
    args = ap.parse_args()
    measurement = Measurement()
    catalog = pd.read_parquet(args.catalog)
    reference = reference_from_catalog(catalog, args.catalog.parent, DriftSettings())
    held = catalog[catalog["split"] == "test"]
    columns = sorted(c for c in catalog.columns if c.startswith("lr_x"))
    images = [read_image(args.catalog.parent / f).rgb().astype(np.float32) for c in columns for f in held[c]]
    results = []
    for shift, strength in (("none", 0.0), *STRONG):
        shifted = [x if shift == "none" else np.clip(SHIFTS[shift](x, strength), 0, 1) for x in images]
        window = features_table(
            [
                raster_features(Raster(data=np.ascontiguousarray(x, dtype=np.float32), dtype="uint8"))
                for x in shifted
            ]
        )
        for calibrate in (False, True):
            settings = DriftSettings(min_samples=len(window), calibrate=calibrate)
            r = detect_drift(reference, window, settings, evidently=False)
            results.append(
                {
                    "shift": shift,
                    "strength": strength,
                    "calibrated": calibrate,
                    "drift_share": r.drift_share,
                    "detected": r.detected,
                    "drifted": r.drifted,
                    "thresholds": r.thresholds,
                }
            )
            print(f"{shift} {strength:g} calibrated {calibrate}: share {r.drift_share:.2f} {r.state}")
    measurement.write(
        "drift_sample_window",
        {
            "catalog": str(args.catalog),
            "reference_rows": len(reference),
            "reference_sources": int(reference["source"].nunique()),
            "held_out_sources": int(held["source"].nunique()),
            "window_size": len(images),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
