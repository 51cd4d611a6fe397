"""STAC Items for GeoTIFF outputs, and STAC Items/Catalogs as sources of ``hndsr prepare``.

An output ``<dir>/<stem>.tif`` gets ``<dir>/<stem>.json``: a STAC 1.1 Item whose data asset is the
GeoTIFF (relative href), with WGS84 geometry from the raster (null for a raster without
georeferencing, as STAC allows), the projection extension (v2: ``proj:code``/shape/transform/bbox),
the processing extension (lineage, software, datetime) and ``hndsr:*`` fields (scale, model, steps,
seed, samples). Validation runs offline: core STAC against the schemas pystac bundles; the extension
schemas live on stac-extensions.github.io, which only ``stac-validator`` with network reaches.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension

from hndsr import __version__
from hndsr.checkpoint import checkpoint_version
from hndsr.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
DATA_ASSET = "data"
MODEL_NAME = "HNDSR"
# Raster media types a source asset may have (roles aside): GeoTIFF/COG, PNG, JPEG.
RASTER_MEDIA_PREFIXES = ("image/tiff", "image/png", "image/jpeg")


def item_path(output: str | Path) -> Path:
    """Where the Item of an output lives: beside it, ``<stem>.json``."""
    output = Path(output)
    return output.with_suffix(".json")


def model_identity(config: dict[str, Any]) -> tuple[str, str, str]:
    """(name, version, weights sha256) of a checkpoint config."""
    return MODEL_NAME, checkpoint_version(config), str(config.get("sha256") or "")


def item_for_output(
    output: str | Path,
    *,
    scale: float,
    model_version: str,
    checkpoint_sha256: str,
    steps: int,
    seed: int,
    samples: int = 1,
    source: str | None = None,
    source_item: str | None = None,
    cog: bool | None = None,
    model_name: str = MODEL_NAME,
    now: dt.datetime | None = None,
) -> pystac.Item:
    """The STAC Item of the GeoTIFF ``output`` (read for its georeferencing and bands, not its pixels).

    ``source``: the input file (an asset with role "source"); ``source_item``: href of the STAC Item
    the input came from (a ``derived_from`` link); ``cog``: the media type's COG profile (None: as
    the file's layout says).
    """
    import rasterio

    output = Path(output)
    now = now or dt.datetime.now(dt.UTC)
    with rasterio.open(output) as ds:
        crs, transform, bounds = ds.crs, ds.transform, tuple(ds.bounds)
        height, width, dtypes = ds.height, ds.width, ds.dtypes
        descriptions = ds.descriptions
        if cog is None:
            cog = _is_cog(ds)
    georeferenced = crs is not None and not transform.is_identity
    geometry, bbox = _wgs84_footprint(crs, bounds) if georeferenced else (None, None)
    source_name = Path(source).name if source else "an unnamed input"
    properties: dict[str, Any] = {
        "processing:lineage": f"super-resolved x{scale:g} by {model_name} {model_version} from {source_name}",
        "processing:software": {"hndsr": __version__},
        "processing:datetime": pystac.utils.datetime_to_str(now),
        "hndsr:scale": scale,
        "hndsr:model": model_name,
        "hndsr:model_version": model_version,
        "hndsr:checkpoint_sha256": checkpoint_sha256,
        "hndsr:steps": steps,
        "hndsr:seed": seed,
    }
    if samples > 1:
        properties["hndsr:samples"] = samples
    item = pystac.Item(
        id=output.stem,
        geometry=geometry,
        bbox=bbox,
        datetime=now,
        properties=properties,
        stac_extensions=[PROCESSING_EXTENSION],
    )
    media = pystac.MediaType.COG if cog else pystac.MediaType.GEOTIFF
    bands = [
        {"name": desc or f"b{i + 1}", "data_type": dtype}
        for i, (desc, dtype) in enumerate(zip(descriptions, dtypes, strict=True))
    ]
    item.add_asset(
        DATA_ASSET,
        pystac.Asset(
            href=output.name,
            media_type=media,
            roles=["data"],
            title=f"x{scale:g} super-resolution",
            extra_fields={"bands": bands},
        ),
    )
    if source:
        item.add_asset("source", pystac.Asset(href=source, roles=["source"], title="input image"))
    if source_item:
        item.add_link(pystac.Link("derived_from", source_item, media_type=pystac.MediaType.GEOJSON))
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.shape = [height, width]
    if georeferenced:
        epsg = crs.to_epsg()
        proj.code = f"EPSG:{epsg}" if epsg else None
        if epsg is None:
            proj.wkt2 = crs.to_wkt()
        proj.transform = list(transform)[:6]
        proj.bbox = list(bounds)
    else:
        proj.code = None  # no CRS: proj:code null, as the projection extension prescribes
    return item


def _is_cog(ds: Any) -> bool:
    """rio-cogeo's verdict where it is installed, else the layout: tiled, with overviews unless the
    image fits in one tile (a small COG needs none)."""
    try:
        from rio_cogeo.cogeo import cog_validate
    except ImportError:
        tiled = bool(ds.profile.get("tiled"))
        bh, bw = ds.block_shapes[0]
        return tiled and (bool(ds.overviews(1)) or (ds.height <= bh and ds.width <= bw))
    valid, _, _ = cog_validate(ds.name, quiet=True)
    return bool(valid)


def write_output_item(
    output: str | Path,
    *,
    source: str | Path,
    checkpoint_config: dict[str, Any],
    scale: float,
    steps: int,
    seed: int,
    samples: int = 1,
    source_item: str | None = None,
    cog: bool | None = None,
) -> Path:
    """Build, validate and write ``<stem>.json`` beside the GeoTIFF ``output`` (``hndsr sr``)."""
    name, version, sha = model_identity(checkpoint_config)
    item = item_for_output(
        output,
        scale=scale,
        model_name=name,
        model_version=version,
        checkpoint_sha256=sha,
        steps=steps,
        seed=seed,
        samples=samples,
        source=str(Path(source).resolve()),
        source_item=source_item,
        cog=cog,
    )
    return write_item(item, item_path(output))


def _wgs84_footprint(crs: Any, bounds: tuple[float, ...]) -> tuple[dict[str, Any], list[float]]:
    from rasterio.warp import transform

    left, bottom, right, top = bounds
    corners = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    # 20 points per edge: the edges of a projected scene stay close to their true curve in degrees.
    xs, ys = [], []
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        for k in range(20):
            xs.append(x0 + (x1 - x0) * k / 20)
            ys.append(y0 + (y1 - y0) * k / 20)
    lons, lats = transform(crs, "EPSG:4326", xs, ys)
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)]
    ring.append(ring[0])
    geom = {"type": "Polygon", "coordinates": [ring]}
    return geom, [min(lons), min(lats), max(lons), max(lats)]


def write_item(item: pystac.Item, path: str | Path) -> Path:
    """Write the Item as JSON at ``path`` (validated first: an invalid Item is never written)."""
    path = Path(path)
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    validate_core(d, name=str(path))
    path.write_text(json.dumps(d, indent=2) + "\n")
    return path


def item_json(item: pystac.Item) -> bytes:
    """The Item as JSON bytes (for servers that store it beside a result blob)."""
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    validate_core(d, name=item.id)
    return (json.dumps(d, indent=2) + "\n").encode()


def validate_core(d: dict[str, Any], *, name: str) -> None:
    """Validate a STAC Item/Catalog/Collection against the core schema pystac bundles (offline).

    Documents of older STAC versions are migrated by pystac first (their schemas are not bundled)."""
    try:
        from pystac.validation import validate_dict
    except ImportError as exc:  # pragma: no cover - pystac without jsonschema
        raise ConfigError("validating STAC needs jsonschema: pip install jsonschema") from exc
    try:
        if d.get("stac_version") != pystac.get_stac_version():
            d = _migrated(d)
        validate_dict(d, extensions=[])
    except pystac.STACValidationError as exc:
        import jsonschema

        best = jsonschema.exceptions.best_match(exc.source or [])
        detail = f"at {best.json_path}: {best.message}" if best is not None else str(exc)
        raise InputError(f"{name} is not a valid STAC document (core schema) {detail}") from None
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{name} is not a valid STAC document: {type(exc).__name__}: {exc}") from None


def _migrated(d: dict[str, Any]) -> dict[str, Any]:
    from pystac.serialization import identify_stac_object, migrate_to_latest

    return migrate_to_latest(json.loads(json.dumps(d)), identify_stac_object(d))


# ------------------------------------------------------------------------------------- as a source


@dataclass(frozen=True)
class StacAsset:
    """One raster asset of a STAC Item, resolved to an absolute href (local path or URL)."""

    item_id: str
    asset_key: str
    href: str


def is_stac_source(src: str) -> bool:
    return src.lower().endswith(".json")


def raster_assets(document: str | Path) -> list[StacAsset]:
    """The raster assets of a local STAC Item, or of every Item under a local Catalog/Collection.

    Each document is validated (core schema); an Item without a raster asset is an error naming it.
    Raster assets: those with role "data"; in an Item whose assets carry no roles, those with a
    raster media type."""
    path = Path(document)
    if not path.is_file():
        raise InputError(f"STAC document {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise InputError(f"{path} is not a STAC document (a JSON object with a 'type')")
    kind = d.get("type")
    validate_core(d, name=str(path))
    if kind == "Feature":
        items = [pystac.Item.from_dict(_maybe_migrated(d), href=str(path.resolve()), migrate=False)]
    elif kind in ("Catalog", "Collection"):
        catalog = pystac.read_file(str(path.resolve()))
        assert isinstance(catalog, pystac.Catalog)
        items = []
        for item in catalog.get_items(recursive=True):
            validate_core(item.to_dict(include_self_link=False, transform_hrefs=False), name=item.id)
            items.append(item)
        if not items:
            raise InputError(f"STAC catalog {path} holds no Items: nothing to prepare")
    else:
        raise InputError(f"{path} is a STAC {kind!r}, not an Item, Catalog or Collection")
    out: list[StacAsset] = []
    for item in items:
        found = _item_rasters(item)
        if not found:
            raise InputError(
                f"STAC Item {item.id!r} has no raster asset (role 'data', or a GeoTIFF/PNG/JPEG media "
                "type): add one or leave the Item out of the catalog"
            )
        out.extend(found)
    return out


def _maybe_migrated(d: dict[str, Any]) -> dict[str, Any]:
    return d if d.get("stac_version") == pystac.get_stac_version() else _migrated(d)


def _item_rasters(item: pystac.Item) -> list[StacAsset]:
    assets = item.get_assets()
    with_roles = any(a.roles for a in assets.values())
    found = []
    for key, asset in sorted(assets.items()):
        media = (asset.media_type or "").lower()
        chosen = "data" in (asset.roles or []) if with_roles else media.startswith(RASTER_MEDIA_PREFIXES)
        if chosen:
            found.append(StacAsset(item.id, key, asset.get_absolute_href() or asset.href))
    return found
