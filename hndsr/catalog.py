"""The tables ``hndsr prepare`` writes: ``catalog.parquet`` (one row per HR tile) and ``rejects.parquet``
(one row per skipped input), their columns and their parquet encoding."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from hndsr.errors import ConfigError

CATALOG_FILE = "catalog.parquet"
REJECTS_FILE = "rejects.parquet"

# Columns of catalog.parquet, in order; one ``lr_x<scale>`` column per scale follows.
CATALOG_COLUMNS: tuple[str, ...] = (
    "filename",  # HR tile, relative to the output folder (posix)
    "source",  # source image: path relative to the source folder, or s3://bucket/key
    "source_sha256",
    "split",
    "tile_y",  # offset of the tile in the source image, in pixels
    "tile_x",
    "height",
    "width",
    "bands",
    "dtype",
    "sensor",  # null where unknown
    "acquisition_date",  # ISO date (YYYY-MM-DD, or YYYY), null where unknown
    "crs",  # e.g. EPSG:26914, null without georeferencing
    "sha256",  # of the HR tile file
    "band_mean",  # per band, of valid pixels, values in [0, 1]
    "band_std",
    "sharpness",  # variance of the Laplacian of Y (BT.601) in 8-bit units
    "nodata_fraction",
    "stac_item",  # id of the STAC Item the source came from, null for folder sources
    "stac_asset",  # key of its asset
)
REJECT_COLUMNS: tuple[str, ...] = ("source", "source_sha256", "size_bytes", "reason", "detail")
REJECT_REASONS = (
    "empty",
    "unsupported",
    "corrupt",
    "too_few_bands",
    "too_small",
    "all_nodata",
    "duplicate",
)


def lr_column(scale: float) -> str:
    return f"lr_x{scale:g}"


def _catalog_schema(scales: Iterable[float]) -> Any:
    import pyarrow as pa

    types = {
        "tile_y": pa.int32(),
        "tile_x": pa.int32(),
        "height": pa.int32(),
        "width": pa.int32(),
        "bands": pa.int32(),
        "band_mean": pa.list_(pa.float64()),
        "band_std": pa.list_(pa.float64()),
        "sharpness": pa.float64(),
        "nodata_fraction": pa.float64(),
    }
    names = [*CATALOG_COLUMNS, *(lr_column(s) for s in scales)]
    return pa.schema([(n, types.get(n, pa.string())) for n in names])


def _parquet_bytes(rows: list[dict[str, Any]], schema: Any) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("writing catalog.parquet needs pyarrow: pip install 'hndsr[data]'") from exc
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def catalog_bytes(rows: list[dict[str, Any]], scales: tuple[float, ...]) -> bytes:
    return _parquet_bytes(rows, _catalog_schema(scales))


def rejects_bytes(rejects: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa

    schema = pa.schema([(n, pa.int64() if n == "size_bytes" else pa.string()) for n in REJECT_COLUMNS])
    return _parquet_bytes(sorted(rejects, key=lambda r: r["source"]), schema)
