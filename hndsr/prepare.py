"""``hndsr prepare``: raw HR images -> HR tiles, their LR counterparts per scale, and ``catalog.parquet``.

Layout of the output folder::

    <out>/{train,val,test}/hr/<name>_y<Y>_x<X>.<png|tif>
    <out>/{train,val,test}/lr_x<scale>/<same name>
    <out>/catalog.parquet   one row per HR tile (CATALOG_COLUMNS + one lr_x<scale> column per scale)
    <out>/rejects.parquet   one row per input file that was skipped, with the reason
    <out>/summary.json      counts per split, rejects per reason

Decisions:

* The split of a source image is ``hndsr.data.split_of`` of the source file's sha256 with the fractions
  of ``data.val_fraction/test_fraction``: every tile of one source lands in the split that training
  and ``hndsr evaluate --split`` give that file. No leakage between splits.
* LR tiles are the HR tile degraded by ``hndsr.resample.resize`` (antialiased bicubic): the
  degradation of the evaluation protocol.
* Tiles are written as PNG for 3-band sources without georeferencing, as GeoTIFF otherwise (all bands
  and the georeferencing kept, the transform shifted to the tile and scaled for the LR tiles).
* Bad inputs (empty, unsupported, corrupt/truncated, < 3 bands, not 8/16-bit, smaller than a tile,
  all nodata, exact duplicates of an earlier file) are rejected with the reason, never a crash.
* Nodata: the value the file declares; for files declaring none, pixels that are 0 in every band
  (the usual fill value of aerial mosaics).
* Idempotent: a state file remembers each source's size, mtime, sha256 and outputs, so an unchanged
  source is not even decoded again; files are only written when their bytes change, and outputs no
  longer produced are removed.

One source's tiles and rejects: :mod:`hndsr.source_tiles`; the tables' columns and encoding:
:mod:`hndsr.catalog`; tile statistics: :mod:`hndsr.image_stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hndsr.catalog import CATALOG_FILE, REJECT_REASONS, REJECTS_FILE, catalog_bytes, rejects_bytes
from hndsr.config import Params
from hndsr.data import SPLITS
from hndsr.errors import ConfigError, InputError
from hndsr.files import sha256_file
from hndsr.source_tiles import Outcome, Source, reject, tile_source

if TYPE_CHECKING:
    from hndsr.stac_items import StacAsset

logger = logging.getLogger(__name__)

PREPARE_VERSION = (
    2  # 2: stac_item/stac_asset columns; bump when the outputs of the same inputs and params change
)
STATE_FILE = ".prepare-state.json"
SUMMARY_FILE = "summary.json"

# Metadata that travels beside images in raw folders: not images, so neither processed nor rejected.
SIDECAR_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".prj", ".tfw", ".jgw", ".pgw", ".wld", ".ovr", ".csv"}
)


@dataclass(frozen=True)
class PrepareConfig:
    tile_size: int
    scales: tuple[float, ...]
    max_nodata_fraction: float
    val_fraction: float
    test_fraction: float
    sensor: str = ""

    @classmethod
    def from_params(cls, params: Params) -> PrepareConfig:
        p = params.prepare
        return cls(
            tile_size=p.tile_size,
            scales=tuple(float(s) for s in p.scales),
            max_nodata_fraction=p.max_nodata_fraction,
            val_fraction=params.data.val_fraction,
            test_fraction=params.data.test_fraction,
            sensor=p.sensor,
        )

    def fingerprint(self) -> str:
        blob = json.dumps({"version": PREPARE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class PrepareResult:
    out_dir: Path
    summary: dict[str, Any]
    written: int = 0
    unchanged: int = 0
    removed: int = 0
    decoded_sources: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        s = self.summary
        splits = ", ".join(
            f"{name} {s['splits'][name]['sources']} sources/{s['splits'][name]['tiles']} tiles"
            for name in SPLITS
        )
        return (
            f"{s['inputs']} inputs -> {splits}; {s['rejected']} rejected "
            f"({', '.join(f'{k} {v}' for k, v in s['rejects_by_reason'].items()) or 'none'}); "
            f"files: {self.written} written, {self.unchanged} unchanged, {self.removed} removed; "
            f"{self.seconds:.1f} s"
        )


# ------------------------------------------------------------------------------------------------ entry


def prepare(
    src: str | Path,
    out_dir: str | Path,
    config: PrepareConfig,
    *,
    source_prefix: str = "",
    stac_assets: list[StacAsset] | None = None,
) -> PrepareResult:
    """Prepare every image under the folder ``src`` into ``out_dir``.

    ``source_prefix`` (e.g. ``s3://bucket/raw/``) is prepended to the recorded source names when the
    folder is a local mirror of a remote prefix. ``stac_assets``: prepare these raster assets of STAC
    Items instead (``src`` is then the folder of the STAC document, their names are relative to it).
    """
    start = time.monotonic()
    src, out = Path(src), Path(out_dir)
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist: pass a folder of raw HR images or s3://...")
    if stac_assets is None and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise ConfigError(f"the output folder {out} must not lie inside the source folder {src}")
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out)
    state = _load_state(out)
    fingerprint = config.fingerprint()
    new_state: dict[str, Any] = {"version": PREPARE_VERSION, "config": fingerprint, "sources": {}}

    if stac_assets is None:
        sources, ignored = _scan(src, source_prefix)
    else:
        sources, ignored = _stac_sources(stac_assets, src, source_prefix), 0
    logger.info("prepare: %d candidate files in %s (%d sidecar files ignored)", len(sources), src, ignored)
    for s in sources:  # hashing first: duplicates are decided over the whole set, in path order
        cached = state.get("sources", {}).get(s.rel, {})
        if cached.get("size") == s.size and cached.get("mtime_ns") == s.mtime_ns and cached.get("sha256"):
            s.sha256 = cached["sha256"]
        elif s.size:
            s.sha256 = sha256_file(s.path)

    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    first_of: dict[str, str] = {}
    dropped = 0
    decoded = 0
    for i, s in enumerate(sources):
        if s.sha256 and s.sha256 in first_of:
            outcome = Outcome(reject=reject(s, "duplicate", f"same content as {first_of[s.sha256]}"))
        else:
            if s.sha256:
                first_of[s.sha256] = s.name
            key = f"{s.sha256}:{fingerprint}"
            cached = state.get("sources", {}).get(s.rel, {})
            reused = _reuse(cached, key, out)
            if reused is None:
                reused = tile_source(s, config, writer.write_output)
                decoded += 1
            outcome = reused
        if s.stac_item is not None:  # the Item is the source's, not the tiles': cached rows get it too
            outcome.rows = [{**r, "stac_item": s.stac_item, "stac_asset": s.stac_asset} for r in outcome.rows]
        new_state["sources"][s.rel] = {
            "size": s.size,
            "mtime_ns": s.mtime_ns,
            "sha256": s.sha256,
            "key": f"{s.sha256}:{fingerprint}",
            "rows": outcome.rows,
            "outputs": outcome.outputs,
            "reject": outcome.reject,
            "dropped_tiles": outcome.dropped_tiles,
        }
        rows.extend(outcome.rows)
        dropped += outcome.dropped_tiles
        if outcome.reject is not None:
            rejects.append(outcome.reject)
            logger.warning("skipping %s: %s (%s)", s.name, outcome.reject["reason"], outcome.reject["detail"])
        if (i + 1) % 100 == 0:
            logger.info("prepare: %d/%d sources", i + 1, len(sources))

    expected = {p for entry in new_state["sources"].values() for p in entry["outputs"]}
    removed = _remove_stale(out, expected)
    rows.sort(key=lambda r: r["filename"])
    summary = _summary(sources, rows, rejects, ignored, dropped, config)
    writer.write_bytes(out / CATALOG_FILE, catalog_bytes(rows, config.scales))
    writer.write_bytes(out / REJECTS_FILE, rejects_bytes(rejects))
    writer.write_bytes(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    writer.write_bytes(out / STATE_FILE, json.dumps(new_state, sort_keys=True).encode(), count=False)
    result = PrepareResult(
        out_dir=out,
        summary=summary,
        written=writer.written,
        unchanged=writer.unchanged,
        removed=removed,
        decoded_sources=decoded,
        seconds=time.monotonic() - start,
    )
    logger.info("prepare: %s", result.line())
    return result


# ---------------------------------------------------------------------------------------------- sources


def _scan(src: Path, source_prefix: str) -> tuple[list[Source], int]:
    sources: list[Source] = []
    ignored = 0
    for path in sorted(src.rglob("*")):
        rel_parts = path.relative_to(src).parts
        if any(part.startswith(".") for part in rel_parts) or not path.is_file():
            continue  # hidden files and folders: bookkeeping (sync state, temporary files)
        if path.suffix.lower() in SIDECAR_SUFFIXES or path.name.upper().startswith(("LICENCE", "LICENSE")):
            ignored += 1
            continue
        st = path.stat()
        rel = path.relative_to(src).as_posix()
        sources.append(Source(path, rel, source_prefix + rel, st.st_size, st.st_mtime_ns))
    return sources, ignored


def _stac_sources(assets: list[StacAsset], root: Path, source_prefix: str) -> list[Source]:
    """Sources for STAC raster assets: local files (relative hrefs resolved by pystac) under ``root``,
    or anywhere on this machine for a local catalog."""
    sources: list[Source] = []
    seen: set[str] = set()
    root = root.resolve()
    for a in assets:
        href = a.href
        if source_prefix and href.startswith(source_prefix):  # absolute s3:// href inside the mirror
            href = str(root / href[len(source_prefix) :])
        if "://" in href and not href.startswith("file://"):
            raise InputError(
                f"STAC Item {a.item_id!r}: asset {a.asset_key!r} is at {a.href}, outside the catalog's "
                f"folder{' ' + source_prefix if source_prefix else ''}: keep assets beside the catalog "
                "(relative hrefs) or use a local catalog"
            )
        path = Path(href.removeprefix("file://")).resolve()
        if not path.is_file():
            raise InputError(f"STAC Item {a.item_id!r}: asset {a.asset_key!r} ({a.href}) does not exist")
        if str(path) in seen:
            continue
        seen.add(str(path))
        rel = path.relative_to(root).as_posix() if root in path.parents else path.as_posix()
        name = source_prefix + rel if source_prefix else rel
        st = path.stat()
        sources.append(Source(path, rel, name, st.st_size, st.st_mtime_ns, "", a.item_id, a.asset_key))
    return sorted(sources, key=lambda s: s.rel)


def _reuse(cached: dict[str, Any], key: str, out: Path) -> Outcome | None:
    """The previous outcome of an unchanged source, if every output it wrote is still there."""
    if cached.get("key") != key:
        return None
    outputs: dict[str, int] = cached.get("outputs") or {}
    for rel, size in outputs.items():
        p = out / rel
        if not p.is_file() or p.stat().st_size != size:
            return None
    return Outcome(
        rows=cached.get("rows") or [],
        outputs=outputs,
        reject=cached.get("reject"),
        dropped_tiles=int(cached.get("dropped_tiles") or 0),
    )


# ---------------------------------------------------------------------------------------------- outputs


class _Writer:
    """Writes a file only when its bytes differ from what is there (atomic rename), and counts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = 0
        self.unchanged = 0

    def write_bytes(self, path: Path, data: bytes, *, count: bool = True) -> int:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            self.unchanged += count
            return len(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.written += count
        return len(data)

    def write_output(self, rel: str, data: bytes) -> int:
        """A tile, by its posix path relative to the output folder."""
        return self.write_bytes(self.root / rel, data)


def _remove_stale(out: Path, expected: set[str]) -> int:
    """Delete tiles under <out>/{train,val,test} that this run did not produce (removed sources, ...)."""
    removed = 0
    for split in SPLITS:
        root = out / split
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*"), reverse=True):
            if p.is_file() and p.relative_to(out).as_posix() not in expected:
                p.unlink()
                removed += 1
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if not any(root.iterdir()):
            root.rmdir()
    return removed


def _load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if state.get("version") == PREPARE_VERSION else {}


def _summary(
    sources: list[Source],
    rows: list[dict[str, Any]],
    rejects: list[dict[str, Any]],
    ignored: int,
    dropped: int,
    config: PrepareConfig,
) -> dict[str, Any]:
    splits = {
        name: {
            "sources": len({r["source"] for r in rows if r["split"] == name}),
            "tiles": sum(1 for r in rows if r["split"] == name),
        }
        for name in SPLITS
    }
    by_reason = Counter(r["reason"] for r in rejects)
    return {
        "inputs": len(sources),
        "accepted": len(sources) - len(rejects),
        "rejected": len(rejects),
        "reject_rate": round(len(rejects) / len(sources), 6) if sources else 0.0,
        "rejects_by_reason": {k: by_reason[k] for k in REJECT_REASONS if by_reason[k]},
        "ignored_sidecar_files": ignored,
        "tiles": len(rows),
        "dropped_tiles_nodata": dropped,
        "splits": splits,
        "tile_size": config.tile_size,
        "scales": list(config.scales),
        "val_fraction": config.val_fraction,
        "test_fraction": config.test_fraction,
    }
