"""The training reference: the features of a catalog's tiles (computed once, cached) or a features
table, from a local path or S3."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hndsr.errors import InputError
from hndsr.image_read import read_image
from monitoring.drift.settings import DriftSettings
from monitoring.features import DRIFT_FEATURES, raster_features

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "hndsr" / "drift"


def features_table(rows: Iterator[dict[str, float]] | list[dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    missing = [c for c in DRIFT_FEATURES if c not in frame.columns]
    if missing:
        raise InputError(f"statistics lack the features {', '.join(missing)}")
    return frame


def reference_from_catalog(
    catalog: pd.DataFrame, root: Path, settings: DriftSettings, *, fetch: Any = None
) -> pd.DataFrame:
    """Features of the catalog's tiles (LR tiles of every scale, or the HR tiles) under ``root``;
    ``fetch(rel) -> Path`` supplies files that are not local (S3)."""
    rows = catalog if settings.split == "all" else catalog[catalog["split"] == settings.split]
    if rows.empty:
        splits = sorted(set(catalog["split"])) if "split" in catalog else []
        raise InputError(
            f"the catalog has no {settings.split!r} tiles (splits: {', '.join(splits) or 'none'}); "
            "choose another --split or prepare the data first"
        )
    columns = sorted(c for c in catalog.columns if c.startswith("lr_x")) if settings.images == "lr" else []
    if settings.images == "lr" and not columns:
        raise InputError("the catalog has no lr_x<scale> columns: use --reference-images hr")
    sources = rows["source"] if "source" in rows else rows["filename"]
    if columns:
        pairs = [
            (f, str(src)) for c in columns for f, src in zip(rows[c], sources, strict=True) if f == f and f
        ]
    else:
        pairs = [(str(f), str(src)) for f, src in zip(rows["filename"], sources, strict=True)]
    if len(pairs) > settings.reference_sample:
        picked = np.random.default_rng(0).choice(len(pairs), settings.reference_sample, replace=False)
        pairs = [pairs[i] for i in sorted(picked)]
    out = []
    for rel, source in pairs:
        path = root / rel if fetch is None else fetch(rel)
        out.append(raster_features(read_image(path)) | {"file": rel, "source": source})
    return features_table(out)


def load_reference(
    reference: str, settings: DriftSettings, *, cache_dir: Path = DEFAULT_CACHE
) -> pd.DataFrame:
    """A features table (``hndsr drift reference`` output) as is; a catalog's features, computed once
    and cached by the catalog's sha256 and the reference settings."""
    local = _local_copy(reference, cache_dir)
    try:
        table = pd.read_parquet(local)
    except Exception as exc:
        raise InputError(f"cannot read the reference {reference} as parquet: {exc}") from exc
    lacking = [c for c in DRIFT_FEATURES if c not in table.columns]
    if not lacking:
        return table
    if "file" in table.columns and len(lacking) < len(DRIFT_FEATURES):  # hndsr drift reference's output
        raise InputError(
            f"the features table {reference} lacks {', '.join(lacking)} (written by an older hndsr): "
            "rebuild it with `hndsr drift reference`, or pass the catalog.parquet"
        )
    if not {"filename", "split"} <= set(table.columns):
        raise InputError(
            f"{reference} is neither a catalog.parquet (hndsr prepare) nor a features table "
            "(hndsr drift reference)"
        )
    digest = hashlib.sha256(local.read_bytes()).hexdigest()[:16]
    features = hashlib.sha256(",".join(DRIFT_FEATURES).encode()).hexdigest()[:8]  # new features: recompute
    key = f"{digest}-{settings.split}-{settings.images}-{settings.reference_sample}-{features}.parquet"
    cached = cache_dir / "reference" / key
    if cached.is_file():
        return pd.read_parquet(cached)
    fetch = None
    root = local.parent
    if reference.startswith("s3://"):
        prefix = reference.rsplit("/", 1)[0]
        root = cache_dir / "objects" / digest
        fetch = _s3_fetcher(prefix, root)
    table = reference_from_catalog(table, root, settings, fetch=fetch)
    cached.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(cached)
    logger.info("reference: %d images from %s (cached in %s)", len(table), reference, cached)
    return table


def _local_copy(uri: str, cache_dir: Path) -> Path:
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.is_file():
            raise InputError(
                f"reference {uri} does not exist: run `hndsr prepare` or give its catalog.parquet"
            )
        return path
    from lake.storage import S3Settings, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    target = cache_dir / "objects" / bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    S3Settings.from_env().client().fget_object(bucket, key, str(target))
    return target


def _s3_fetcher(prefix: str, root: Path) -> Any:
    from lake.storage import S3Settings, parse_s3_uri

    bucket, key_prefix = parse_s3_uri(prefix)
    client = S3Settings.from_env().client()

    def fetch(rel: str) -> Path:
        target = root / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(bucket, f"{key_prefix}/{rel}".lstrip("/"), str(target))
        return target

    return fetch


# ---------------------------------------------------------------------------------- requests
