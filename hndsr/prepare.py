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
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hndsr.config import Params
from hndsr.data import SPLITS, split_of
from hndsr.errors import ConfigError, InputError, UnsupportedFormatError
from hndsr.files import sha256_file
from hndsr.image_read import read_image
from hndsr.image_write import encode_image
from hndsr.raster import SUPPORTED_SUFFIXES, GeoInfo, Raster
from hndsr.resample import lr_size, resize

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1  # bump when the outputs of the same inputs and params change
STATE_FILE = ".prepare-state.json"
CATALOG_FILE = "catalog.parquet"
REJECTS_FILE = "rejects.parquet"
SUMMARY_FILE = "summary.json"

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
# Metadata that travels beside images in raw folders: not images, so neither processed nor rejected.
SIDECAR_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".prj", ".tfw", ".jgw", ".pgw", ".wld", ".ovr", ".csv"}
)
_INTEGER_DTYPES = ("uint8", "uint16")


def lr_column(scale: float) -> str:
    return f"lr_x{scale:g}"


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


@dataclass
class _Source:
    path: Path
    rel: str  # relative posix path in the source folder
    name: str  # as recorded in the catalog (rel, or the s3:// URI)
    size: int
    mtime_ns: int
    sha256: str = ""


@dataclass
class _Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)  # relative path -> size
    reject: dict[str, Any] | None = None
    dropped_tiles: int = 0


# ------------------------------------------------------------------------------------------------ entry


def prepare(
    src: str | Path,
    out_dir: str | Path,
    config: PrepareConfig,
    *,
    source_prefix: str = "",
) -> PrepareResult:
    """Prepare every image under the folder ``src`` into ``out_dir``.

    ``source_prefix`` (e.g. ``s3://bucket/raw/``) is prepended to the recorded source names when the
    folder is a local mirror of a remote prefix.
    """
    start = time.monotonic()
    src, out = Path(src), Path(out_dir)
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist: pass a folder of raw HR images or s3://...")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ConfigError(f"the output folder {out} must not lie inside the source folder {src}")
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out)
    state = _load_state(out)
    fingerprint = config.fingerprint()
    new_state: dict[str, Any] = {"version": PREPARE_VERSION, "config": fingerprint, "sources": {}}

    sources, ignored = _scan(src, source_prefix)
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
            outcome = _Outcome(reject=_reject(s, "duplicate", f"same content as {first_of[s.sha256]}"))
        else:
            if s.sha256:
                first_of[s.sha256] = s.name
            key = f"{s.sha256}:{fingerprint}"
            cached = state.get("sources", {}).get(s.rel, {})
            reused = _reuse(cached, key, out)
            if reused is None:
                reused = _process(s, config, writer)
                decoded += 1
            outcome = reused
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
    writer.write_bytes(out / CATALOG_FILE, _catalog_bytes(rows, config.scales))
    writer.write_bytes(out / REJECTS_FILE, _rejects_bytes(rejects))
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


def _scan(src: Path, source_prefix: str) -> tuple[list[_Source], int]:
    sources: list[_Source] = []
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
        sources.append(_Source(path, rel, source_prefix + rel, st.st_size, st.st_mtime_ns))
    return sources, ignored


def _reject(s: _Source, reason: str, detail: str) -> dict[str, Any]:
    return {
        "source": s.name,
        "source_sha256": s.sha256 or None,
        "size_bytes": s.size,
        "reason": reason,
        "detail": detail,
    }


def _reuse(cached: dict[str, Any], key: str, out: Path) -> _Outcome | None:
    """The previous outcome of an unchanged source, if every output it wrote is still there."""
    if cached.get("key") != key:
        return None
    outputs: dict[str, int] = cached.get("outputs") or {}
    for rel, size in outputs.items():
        p = out / rel
        if not p.is_file() or p.stat().st_size != size:
            return None
    return _Outcome(
        rows=cached.get("rows") or [],
        outputs=outputs,
        reject=cached.get("reject"),
        dropped_tiles=int(cached.get("dropped_tiles") or 0),
    )


def _process(s: _Source, config: PrepareConfig, writer: _Writer) -> _Outcome:
    if s.size == 0:
        return _Outcome(reject=_reject(s, "empty", "the file is empty (0 bytes)"))
    if s.path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return _Outcome(
            reject=_reject(s, "unsupported", f"'{s.path.suffix or '(no suffix)'}' is not PNG, JPEG or TIFF")
        )
    try:
        raster = read_image(s.path)
    except UnsupportedFormatError as exc:
        return _Outcome(reject=_reject(s, "unsupported", _strip_path(str(exc), s.path)))
    except InputError as exc:
        return _Outcome(reject=_reject(s, "corrupt", _strip_path(str(exc), s.path)))
    if raster.bands < 3:
        return _Outcome(reject=_reject(s, "too_few_bands", f"{raster.bands} band(s); 3+ (R,G,B,...) needed"))
    if raster.dtype not in _INTEGER_DTYPES:
        return _Outcome(reject=_reject(s, "unsupported", f"pixel type {raster.dtype}; 8- or 16-bit needed"))
    t = config.tile_size
    if min(raster.height, raster.width) < t:
        return _Outcome(
            reject=_reject(
                s, "too_small", f"{raster.width}x{raster.height} px, smaller than the {t} px tile size"
            )
        )
    nodata = nodata_mask(raster)
    if nodata.all():
        return _Outcome(reject=_reject(s, "all_nodata", "every pixel is nodata"))
    split = split_of(s.sha256, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    sensor, date = source_metadata(s.path)
    base = {
        "source": s.name,
        "source_sha256": s.sha256,
        "split": split,
        "bands": raster.bands,
        "dtype": raster.dtype,
        "sensor": sensor or config.sensor or None,
        "acquisition_date": date,
        "crs": _crs_name(raster.profile),
    }
    suffix = ".tif" if raster.profile is not None or raster.bands > 3 else ".png"
    stem = _flat_name(s.rel)
    outcome = _Outcome()
    n_y, n_x = raster.height // t, raster.width // t
    off_y, off_x = (raster.height - n_y * t) // 2, (raster.width - n_x * t) // 2  # centred grid
    for y in range(off_y, off_y + n_y * t, t):
        for x in range(off_x, off_x + n_x * t, t):
            mask = nodata[y : y + t, x : x + t]
            fraction = float(mask.mean())
            if fraction >= 1.0 or fraction > config.max_nodata_fraction:
                outcome.dropped_tiles += 1
                continue
            pixels = np.ascontiguousarray(raster.data[:, y : y + t, x : x + t])
            name = f"{stem}_y{y:05d}_x{x:05d}{suffix}"
            hr_rel = f"{split}/hr/{name}"
            hr_bytes = _encode(pixels, raster, _tile_geo(raster.profile, x, y, 1.0, 1.0), suffix)
            outcome.outputs[hr_rel] = writer.write_bytes(writer.root / hr_rel, hr_bytes)
            mean, std = tile_stats(pixels, mask)
            row = {
                "filename": hr_rel,
                **base,
                "tile_y": y,
                "tile_x": x,
                "height": t,
                "width": t,
                "sha256": hashlib.sha256(hr_bytes).hexdigest(),
                "band_mean": mean,
                "band_std": std,
                "sharpness": sharpness(pixels),
                "nodata_fraction": fraction,
            }
            hr_tensor = torch.from_numpy(pixels)
            for scale in config.scales:
                lh, lw = lr_size((t, t), scale)
                lr = resize(hr_tensor, (lh, lw), antialias=True).numpy()
                lr_rel = f"{split}/{lr_column(scale)}/{name}"
                geo = _tile_geo(raster.profile, x, y, lw / t, lh / t)
                outcome.outputs[lr_rel] = writer.write_bytes(
                    writer.root / lr_rel, _encode(lr, raster, geo, suffix)
                )
                row[lr_column(scale)] = lr_rel
            outcome.rows.append(row)
    if not outcome.rows:
        return _Outcome(
            reject=_reject(
                s,
                "all_nodata",
                f"every {t} px tile is over {config.max_nodata_fraction:.0%} nodata",
            ),
            dropped_tiles=outcome.dropped_tiles,
        )
    return outcome


def _strip_path(message: str, path: Path) -> str:
    return message.replace(str(path), path.name)


def _flat_name(rel: str) -> str:
    """``aGrass/a001.jpg`` -> ``aGrass--a001``: unique per source path, safe as a file name."""
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "--"))


# ----------------------------------------------------------------------------------------- image maths


def nodata_mask(raster: Raster) -> np.ndarray:
    """(H, W) True where every band holds the nodata value (declared, else 0) or is NaN."""
    data = raster.data
    declared = raster.profile.nodata if raster.profile is not None else None
    if declared is not None and np.isnan(declared):
        return np.isnan(data).all(axis=0)
    value = 0.0
    if declared is not None:
        value = declared / float(np.iinfo(raster.dtype).max) if raster.dtype in _INTEGER_DTYPES else declared
    mask: np.ndarray = (np.isclose(data, np.float32(value), rtol=0.0, atol=1e-7) | np.isnan(data)).all(axis=0)
    return mask


def tile_stats(pixels: np.ndarray, nodata: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over the valid pixels of a (bands, H, W) tile."""
    valid = pixels[:, ~nodata].astype(np.float64)
    return [round(float(v), 6) for v in valid.mean(axis=1)], [round(float(v), 6) for v in valid.std(axis=1)]


def luma(pixels: np.ndarray) -> np.ndarray:
    """BT.601 luma of the first three bands of a (bands, H, W) tile in [0, 1], in 8-bit units."""
    r, g, b = (pixels[i].astype(np.float64) for i in range(3))
    return (0.299 * r + 0.587 * g + 0.114 * b) * 255.0


def laplacian(y: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of a 2-D array (interior pixels)."""
    return y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]


def laplacian_variance(lap: np.ndarray) -> float:
    """Sharpness from a Laplacian already computed (:func:`sharpness`'s rounding)."""
    return round(float(lap.var()), 4)


def sharpness(pixels: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of luma (BT.601) in 8-bit units: 0 for a blank tile."""
    return laplacian_variance(laplacian(luma(pixels)))


def _tile_geo(geo: GeoInfo | None, x: int, y: int, sx: float, sy: float) -> GeoInfo | None:
    """Georeferencing of the tile at (x, y), resampled by (sx, sy) (1 for HR, < 1 for LR)."""
    if geo is None:
        return None
    a, b, c, d, e, f = geo.transform
    shifted = GeoInfo(
        crs=geo.crs, transform=(a, b, c + a * x + b * y, d, e, f + d * x + e * y), nodata=geo.nodata
    )
    return shifted if sx == 1.0 and sy == 1.0 else shifted.scaled(sx, sy)


def _encode(pixels: np.ndarray, source: Raster, geo: GeoInfo | None, suffix: str) -> bytes:
    tile = Raster(data=pixels, dtype=source.dtype, profile=geo, band_names=source.band_names)
    return encode_image(tile, "tiff" if suffix == ".tif" else "png", dtype=source.dtype)


def _crs_name(geo: GeoInfo | None) -> str | None:
    if geo is None or not geo.crs:
        return None
    from rasterio.crs import CRS

    try:
        crs = CRS.from_user_input(geo.crs)
    except Exception:  # an unparsable CRS is still recorded, just not shortened
        return geo.crs
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


# -------------------------------------------------------------------------------------------- metadata

# File naming of known products: (pattern, sensor, date groups). NAIP DOQQs end in _YYYYMMDD; NEON AOP
# orthophoto crops start with YYYY_SITE_.
_NAME_RULES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"(?:^|_)m_\d{7}_[ns][ew]_\d{1,2}_\d+_(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})", re.I), "NAIP"),
    (re.compile(r"^(?P<y>(?:19|20)\d{2})_[A-Z]{4}_\d+_"), "NEON AOP"),
    (
        re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})-?(?P<m>0[1-9]|1[0-2])-?(?P<d>0[1-9]|[12]\d|3[01])(?!\d)"),
        None,
    ),
)
_DATE_TAGS = ("ACQUISITIONDATE", "ACQUISITION_DATE", "ACQUISITIONDATETIME", "DATE_ACQUIRED", "DATEACQUIRED")
_SENSOR_TAGS = ("SENSOR", "SENSOR_NAME", "SENSORNAME", "SATELLITE", "PLATFORM", "SPACECRAFT_ID")


def source_metadata(path: Path) -> tuple[str | None, str | None]:
    """(sensor, acquisition date) from the file's tags (TIFF) or EXIF (JPEG), else from its name."""
    sensor, date = _tags_metadata(path)
    for pattern, rule_sensor in _NAME_RULES:
        m = pattern.search(path.name)
        if m is None:
            continue
        groups = m.groupdict()
        if date is None:
            date = "-".join(g for g in (groups.get("y"), groups.get("m"), groups.get("d")) if g)
        if sensor is None and rule_sensor is not None:
            sensor = rule_sensor
        if sensor is not None:
            break
    return sensor, date


def _tags_metadata(path: Path) -> tuple[str | None, str | None]:
    sensor: str | None = None
    date: str | None = None
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as ds:
                    tags = {k.upper(): v for k, v in ds.tags().items()}
            date = next((_iso_date(tags[k]) for k in _DATE_TAGS if k in tags), None)
            sensor = next((tags[k].strip() for k in _SENSOR_TAGS if tags.get(k, "").strip()), None)
        elif suffix in (".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as im:
                exif = im.getexif()
                sub = exif.get_ifd(0x8769)
                date = _iso_date(str(sub.get(0x9003) or ""))  # DateTimeOriginal: the capture time
                make, model = str(exif.get(0x010F) or "").strip(), str(exif.get(0x0110) or "").strip()
                sensor = " ".join(p for p in (make, model) if p) or None
    except Exception as exc:  # metadata is best effort: the pixels were already read fine
        logger.debug("no metadata from %s: %s", path, exc)
    return sensor, date


def _iso_date(value: str) -> str | None:
    m = re.match(r"\s*(\d{4})[:\-/]?(\d{2})[:\-/]?(\d{2})", value)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


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


def _catalog_bytes(rows: list[dict[str, Any]], scales: tuple[float, ...]) -> bytes:
    return _parquet_bytes(rows, _catalog_schema(scales))


def _rejects_bytes(rejects: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa

    schema = pa.schema([(n, pa.int64() if n == "size_bytes" else pa.string()) for n in REJECT_COLUMNS])
    return _parquet_bytes(sorted(rejects, key=lambda r: r["source"]), schema)


def _load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if state.get("version") == PREPARE_VERSION else {}


def _summary(
    sources: list[_Source],
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
