"""The expectation suites, defined in code: one per derived table (see frames.py).

Each expectation carries a ``description`` that says, in the words of the data, what must hold; failure
messages and the HTML data docs both show it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from data_validation.frames import Thresholds
from hndsr.catalog import CATALOG_COLUMNS, lr_column
from hndsr.data import SPLITS

SHA256_REGEX = r"^[0-9a-f]{64}$"
STRING_COLUMNS = ("filename", "source", "source_sha256", "split", "dtype", "sha256", "sensor", "crs")
INT_COLUMNS = ("tile_y", "tile_x", "height", "width", "bands")
FLOAT_COLUMNS = ("sharpness", "nodata_fraction")
LIST_COLUMNS = ("band_mean", "band_std")
# pandas hands strings and lists to GX as object columns, whose values GX checks one by one.
_TYPES = {
    "str": ["str"],
    "int": ["int8", "int16", "int32", "int64"],
    "float": ["float32", "float64"],
    "list": ["ndarray", "list"],
}


def gx_expectations() -> ModuleType:
    """``great_expectations.expectations``, imported on first use, quietly and without usage statistics."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter is not ours
    import great_expectations.expectations as gxe

    return gxe


def _types(columns: tuple[str, ...], kind: str) -> list[Any]:
    gxe = gx_expectations()
    return [
        gxe.ExpectColumnValuesToBeInTypeList(
            column=c, type_list=_TYPES[kind], description=f"column {c} holds {kind} values"
        )
        for c in columns
    ]


def catalog_expectations(t: Thresholds) -> list[Any]:
    gxe = gx_expectations()
    lr_columns = tuple(lr_column(s) for s in t.scales)
    required = ("filename", "source", "source_sha256", "split", "sha256", *lr_columns)
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the catalog has at least one tile"),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=[*CATALOG_COLUMNS, *lr_columns],
            exact_match=False,
            description="every catalog column is present (one lr_x<scale> per prepare.scales)",
        ),
        *_types(STRING_COLUMNS + lr_columns + ("acquisition_date",), "str"),
        *_types(INT_COLUMNS, "int"),
        *_types(FLOAT_COLUMNS, "float"),
        *_types(LIST_COLUMNS, "list"),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"column {c} is never empty")
            for c in required
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="sha256", description="tiles are unique by content (equal sha256: duplicated image data)"
        ),
        gxe.ExpectColumnValuesToBeUnique(column="filename", description="tile file names are unique"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=SHA256_REGEX, description="sha256 is 64 lowercase hex digits"
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="source_sha256", regex=SHA256_REGEX, description="source_sha256 is 64 lowercase hex digits"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS), description="split is known"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="split",
            column_B="expected_split",
            description="each tile is in the hash split of its source (data.val_fraction/test_fraction): "
            "the catalog agrees with training and `hndsr evaluate --split`",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=t.tile_size, description=f"tiles are >= {t.tile_size} px high"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=t.tile_size, description=f"tiles are >= {t.tile_size} px wide"
        ),
        gxe.ExpectColumnValuesToBeBetween(column="bands", min_value=3, description="tiles have 3+ bands"),
        gxe.ExpectColumnValuesToBeInSet(
            column="dtype", value_set=["uint8", "uint16"], description="tiles are 8- or 16-bit"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="band_mean_min", min_value=0.0, description="band means are >= 0 (values in [0, 1])"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="band_mean_max", max_value=1.0, description="band means are <= 1 (values in [0, 1])"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="band_std_max",
            min_value=t.min_band_std,
            description=f"no blank tiles: some band varies (std >= {t.min_band_std:g})",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="sharpness",
            min_value=t.min_sharpness,
            description=f"no blank or blurred tiles: variance of the Laplacian >= {t.min_sharpness:g}",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="nodata_fraction",
            min_value=0.0,
            max_value=t.max_nodata_fraction,
            description=f"nodata fraction of each tile <= {t.max_nodata_fraction:g}",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="acquisition_date",
            regex=r"^\d{4}(?:-\d{2}-\d{2})?$",
            description="acquisition dates are ISO (YYYY-MM-DD or YYYY) where known",
        ),
    ]


def sources_expectations(t: Thresholds) -> list[Any]:
    gxe = gx_expectations()
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="n_splits", max_value=1, description="no source image has tiles in two splits (leakage)"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_sources",
            max_value=1,
            description="no duplicate source images (the same content under two names)",
        ),
    ]


def splits_expectations(t: Thresholds) -> list[Any]:
    gxe = gx_expectations()
    from great_expectations.expectations.row_conditions import Column

    return [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="tolerance",
            column_B="abs_deviation",
            or_equal=True,
            description=f"each split's share of source images is within tolerance of params "
            f"(val {t.val_fraction:g}, test {t.test_fraction:g}; tolerance {t.split_tolerance:g}, "
            "wider for few sources)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_sources",
            min_value=1,
            row_condition=Column("split") == "train",
            description="the train split is not empty",
        ),
    ]


def ingest_expectations(t: Thresholds) -> list[Any]:
    gxe = gx_expectations()
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="reject_rate",
            min_value=0.0,
            max_value=t.max_reject_rate,
            description=f"rejected input files <= {t.max_reject_rate:g} of all inputs",
        ),
    ]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    frame: str  # attribute of frames.Frames
    index_columns: tuple[str, ...]  # what an example row is identified by
    build: Callable[[Thresholds], list[Any]]


SUITES: dict[str, SuiteSpec] = {
    "catalog": SuiteSpec("catalog", "catalog", ("filename",), catalog_expectations),
    "sources": SuiteSpec("sources", "sources", ("sources",), sources_expectations),
    "splits": SuiteSpec("splits", "splits", ("split",), splits_expectations),
    "ingest": SuiteSpec("ingest", "ingest", ("inputs", "rejected"), ingest_expectations),
}
