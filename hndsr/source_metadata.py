"""What a source image says about itself: sensor, acquisition date and CRS name for the catalog.

Read from TIFF tags or JPEG EXIF where present, else from the naming of known products; always best
effort (the pixels were already read fine, so missing metadata is a null, never a reject).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from hndsr.raster import GeoInfo

logger = logging.getLogger(__name__)

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


def crs_name(geo: GeoInfo | None) -> str | None:
    """``EPSG:<code>`` where the CRS has one, else its full string; None without georeferencing."""
    if geo is None or not geo.crs:
        return None
    from rasterio.crs import CRS

    try:
        crs = CRS.from_user_input(geo.crs)
    except Exception:  # an unparsable CRS is still recorded, just not shortened
        return geo.crs
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()
