"""The tables the suites run on, derived from ``catalog.parquet`` and ``rejects.parquet``.

Great Expectations checks rows and columns; checks over groups (a source in two splits, the share of
each split, the reject rate) become rows of small derived tables, so that each failure still points at
the rows that cause it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hndsr.catalog import CATALOG_FILE, REJECT_COLUMNS, REJECTS_FILE
from hndsr.data import SPLITS, split_of
from hndsr.errors import InputError


@dataclass(frozen=True)
class Thresholds:
    """What the suites hold the catalog to (``validate`` section of params.yaml, plus the split fractions
    and tile size of ``data`` and ``prepare``)."""

    tile_size: int
    scales: tuple[float, ...]
    val_fraction: float
    test_fraction: float
    split_tolerance: float
    max_nodata_fraction: float
    max_reject_rate: float
    min_band_std: float
    min_sharpness: float


@dataclass
class Frames:
    catalog: pd.DataFrame  # one row per HR tile, plus derived columns
    sources: pd.DataFrame  # one row per distinct source content (source_sha256)
    splits: pd.DataFrame  # one row per split
    ingest: pd.DataFrame  # one row: inputs, rejected, reject_rate
    rejects: pd.DataFrame  # one row per rejected input file (examples for the reject rate)


def load_tables(catalog_path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = Path(catalog_path)
    if path.is_dir():
        path = path / CATALOG_FILE
    if not path.is_file():
        raise InputError(f"catalog {path} not found: run `hndsr prepare` first (or pass --catalog PATH)")
    try:
        catalog = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read catalog {path} ({exc}); re-run `hndsr prepare`") from exc
    rejects_path = path.with_name(REJECTS_FILE)
    if rejects_path.is_file():
        rejects = pd.read_parquet(rejects_path)
    else:
        rejects = pd.DataFrame({c: pd.Series(dtype="object") for c in REJECT_COLUMNS})
    return catalog, rejects


def _per_row(values: pd.Series, fn: str) -> pd.Series:
    """min/max over each row's per-band list (NaN for a missing or empty list)."""

    def one(v: object) -> float:
        arr = np.asarray(v if v is not None else [], dtype=np.float64)
        return float(getattr(np, fn)(arr)) if arr.size else math.nan

    return values.map(one).astype("float64")


def build_frames(catalog: pd.DataFrame, rejects: pd.DataFrame, t: Thresholds) -> Frames:
    cat = catalog.copy()
    for column in ("band_mean", "band_std"):
        if column in cat.columns:  # parquet lists arrive as numpy arrays; GX type checks know lists
            cat[column] = cat[column].map(lambda v: None if v is None else [float(x) for x in v])
    if {"band_mean", "band_std"} <= set(cat.columns):
        cat["band_mean_min"] = _per_row(cat["band_mean"], "min")
        cat["band_mean_max"] = _per_row(cat["band_mean"], "max")
        cat["band_std_max"] = _per_row(cat["band_std"], "max")  # 0 in every band: a blank tile
    if "source_sha256" in cat.columns:
        cat["expected_split"] = cat["source_sha256"].map(
            lambda h: (
                split_of(str(h), val_fraction=t.val_fraction, test_fraction=t.test_fraction)
                if isinstance(h, str) and h
                else None
            )
        )

    if {"source_sha256", "source", "split"} <= set(cat.columns):
        grouped = cat.groupby("source_sha256", sort=True)
        sources = pd.DataFrame(
            {
                "source_sha256": grouped.size().index,
                "sources": grouped["source"].agg(lambda s: ", ".join(sorted(set(s)))).to_numpy(),
                "n_sources": grouped["source"].nunique().to_numpy(),
                "splits": grouped["split"].agg(lambda s: ", ".join(sorted(set(s)))).to_numpy(),
                "n_splits": grouped["split"].nunique().to_numpy(),
                "tiles": grouped.size().to_numpy(),
            }
        )
        per_split = cat.groupby("split")["source_sha256"].nunique()
    else:
        sources = pd.DataFrame(
            columns=["source_sha256", "sources", "n_sources", "splits", "n_splits", "tiles"]
        )
        per_split = pd.Series(dtype="int64")

    n = int(sources["source_sha256"].nunique()) if len(sources) else 0
    expected = {
        "train": 1.0 - t.val_fraction - t.test_fraction,
        "val": t.val_fraction,
        "test": t.test_fraction,
    }
    rows = []
    for name in SPLITS:
        count = int(per_split.get(name, 0))
        p = expected[name]
        fraction = count / n if n else 0.0
        # Few sources: a hash split scatters; allow three binomial standard deviations.
        tolerance = max(t.split_tolerance, 3.0 * math.sqrt(p * (1.0 - p) / n)) if n else 1.0
        rows.append(
            {
                "split": name,
                "n_sources": count,
                "fraction": round(fraction, 6),
                "expected": p,
                "abs_deviation": round(abs(fraction - p), 6),
                "tolerance": round(tolerance, 6),
            }
        )
    splits = pd.DataFrame(rows)

    accepted = int(cat["source"].nunique()) if "source" in cat.columns else 0
    inputs = accepted + len(rejects)
    ingest = pd.DataFrame(
        [
            {
                "inputs": inputs,
                "accepted": accepted,
                "rejected": len(rejects),
                "reject_rate": round(len(rejects) / inputs, 6) if inputs else 0.0,
            }
        ]
    )
    return Frames(catalog=cat, sources=sources, splits=splits, ingest=ingest, rejects=rejects)
