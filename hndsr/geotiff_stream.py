"""A GeoTIFF written row band by row band, for scene-size outputs that never fit in memory whole."""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.errors import NotGeoreferencedWarning

from hndsr.cog import to_cog
from hndsr.errors import (
    InputError,
    OutputValidationError,
    UnsupportedFormatError,
)
from hndsr.image_write import (
    GTIFF_BLOCK,
    encoder_errors,
    gtiff_profile,
    output_dtype,
    output_nodata,
    quantise,
)
from hndsr.raster import GeoInfo, Raster, default_band_names, short_error

logger = logging.getLogger(__name__)


class GeoTIFFRowWriter:
    """Writes a GeoTIFF from float rows ``(bands, n, width)`` in [0, 1] arriving top to bottom, so an
    output far larger than memory can be written; the file equals what :func:`write_image` writes
    for the same raster (same profile, validation, quantisation, band names), atomically.

    ``like`` is the raster the output derives from: its source dtype picks the output dtype (or pass
    ``dtype``) and its nodata is rescaled like :func:`write_image` does; ``profile`` is the output's
    georeferencing. Rows are buffered up to whole 256-row block strips, so every compressed block is
    written once. Use as a context manager: the file appears only when the block exits cleanly.

    With ``cog`` (the default) the finished rows are then turned into a Cloud-Optimized GeoTIFF
    (:func:`hndsr.cog.to_cog`, block by block through an on-disk intermediate, GDAL's cache bounded).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bands: int,
        height: int,
        width: int,
        like: Raster,
        profile: GeoInfo | None,
        band_names: tuple[str, ...],
        dtype: str | None = None,
        cog: bool = True,
    ) -> None:
        p = Path(path)
        if p.suffix.lower() not in (".tif", ".tiff"):
            raise UnsupportedFormatError(f"streamed output must be a .tif/.tiff GeoTIFF, not {path}")
        if not p.parent.is_dir():
            raise InputError(f"cannot write {path}: directory {p.parent} does not exist; create it first")
        self.path, self.name = p, str(path)
        self.bands, self.height, self.width = bands, height, width
        self.dtype = output_dtype(like.dtype, dtype, "tiff", self.name)
        nodata = output_nodata(like, self.dtype, self.name)
        self.profile = gtiff_profile(bands, height, width, self.dtype, profile, nodata)
        self.band_names = band_names if len(band_names) == bands else default_band_names(bands)
        self.strip = GTIFF_BLOCK
        self.tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
        self.cog_tmp = self.tmp.with_suffix(".cog.tmp") if cog else None
        self.rows_written = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._dst: Any = None
        self._env: Any = None

    def __enter__(self) -> GeoTIFFRowWriter:
        self._env = rasterio.Env(GDAL_PAM_ENABLED="NO")
        self._env.__enter__()
        try:
            with warnings.catch_warnings(), encoder_errors(self.name, to_disk=True):
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dst = rasterio.open(self.tmp, "w", **self.profile)
        except BaseException:
            self._env.__exit__(None, None, None)
            self.tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, y0: int, rows: np.ndarray) -> None:
        """Rows ``y0 .. y0 + n`` of every band, float; they must follow the rows written before."""
        if y0 != self.rows_written + self._pending_rows:
            raise ValueError(
                f"rows must arrive in order: expected row {self.rows_written + self._pending_rows}, got {y0}"
            )
        if rows.shape[0] != self.bands or rows.shape[2] != self.width:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.bands} x ... x {self.width}")
        if not np.isfinite(rows).all():
            bad = int(np.size(rows) - np.count_nonzero(np.isfinite(rows)))
            raise OutputValidationError(
                f"refusing to write {self.name}: {bad} non-finite values (NaN/inf) in the output; the model "
                "output is broken"
            )
        self._pending.append(quantise(rows, self.dtype))
        self._pending_rows += rows.shape[1]
        if self._pending_rows >= self.strip:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._pending_rows:
            return
        pending = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = pending.shape[1] if final else pending.shape[1] // self.strip * self.strip
        window = rasterio.windows.Window(0, self.rows_written, self.width, n)
        with encoder_errors(self.name, to_disk=True):
            self._dst.write(pending[:, :n], window=window)
        self.rows_written += n
        rest = pending[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._flush(final=True)
                if self.rows_written != self.height:
                    raise OutputValidationError(
                        f"refusing to write {self.name}: only {self.rows_written} of {self.height} rows "
                        "were rendered"
                    )
                with encoder_errors(self.name, to_disk=True):
                    self._dst.descriptions = self.band_names
                    dst, self._dst = self._dst, None
                    dst.close()
                    if self.cog_tmp is not None:
                        to_cog(self.tmp, self.cog_tmp, in_memory=False)
                        self.tmp.unlink()
                        self.tmp = self.cog_tmp
                try:
                    with open(self.tmp, "rb+") as fh:
                        os.fsync(fh.fileno())
                    os.replace(self.tmp, self.path)
                except OSError as e:
                    raise InputError(
                        f"cannot write {self.name}: {short_error(e)}; check the directory is writable and "
                        "has "
                        "space"
                    ) from e
        finally:
            if self._dst is not None:
                try:
                    self._dst.close()
                except Exception:  # already failing: the original error is the one to report
                    logger.debug("closing %s after a failure also failed", self.tmp, exc_info=True)
                self._dst = None
            self.tmp.unlink(missing_ok=True)
            if self.cog_tmp is not None:
                self.cog_tmp.unlink(missing_ok=True)
            self._env.__exit__(None, None, None)
