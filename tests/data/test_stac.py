"""STAC Items beside GeoTIFF outputs (``hndsr sr``) and STAC Items/Catalogs as ``hndsr prepare`` sources:
validity (stac-validator, core schema, offline), the round trip sr -> Catalog -> prepare (local and S3),
and the bad documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from imagesets import write_geotiff
from pystac.extensions.projection import ProjectionExtension
from synthetic import TINY_MODEL
from typer.testing import CliRunner

from hndsr.checkpoint import save_checkpoint
from hndsr.models.hndsr_model import HNDSR
from hndsr.stac_items import PROCESSING_EXTENSION, item_for_output, item_path, write_item
from hndsr_cli import app
from lake.server import EmbeddedS3

runner = CliRunner()
PARAMS = "prepare:\n  tile_size: 48\ndata:\n  patch_size: 48\n"


def stac_validate(path: Path) -> None:
    """stac-validator, offline: the core schemas pystac bundles stand in for schemas.stacspec.org
    (extension schemas need the network, so core only)."""
    from importlib.resources import files

    from stac_validator.validate import StacValidate

    root = files("pystac.validation.jsonschemas")
    spec = root / "stac-spec" / "v1.1.0"
    schema_map = {
        f"https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/{p.name}": str(p) for p in spec.iterdir()
    }
    schema_map["https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json"] = str(
        spec / "catalog.json"
    )
    for name in ("Feature", "Geometry"):
        schema_map[f"https://geojson.org/schema/{name}.json"] = str(root / "geojson" / f"{name}.json")
    v = StacValidate(str(path), core=True, schema_map=schema_map)
    assert v.run(), v.message


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(HNDSR(**{k: dict(v) for k, v in TINY_MODEL.items()}), out, stages=[])
    return out


def _sr(src: Path, dst: Path, checkpoint: Path, *extra: str) -> None:
    args = ["sr", str(src), str(dst), "--scale", "2", "--steps", "0", "--tile", "0"]
    result = runner.invoke(app, [*args, "--checkpoint", str(checkpoint), *extra])
    assert result.exit_code == 0, result.output


def test_sr_writes_a_valid_item_beside_a_geotiff(tmp_path: Path, checkpoint: Path) -> None:
    src = write_geotiff(tmp_path / "scene.tif", size=40)
    out = tmp_path / "out" / "scene_x2.tif"
    out.parent.mkdir()
    _sr(src, out, checkpoint, "--seed", "7", "--source-item", "https://example.com/items/scene.json")
    path = out.with_suffix(".json")
    stac_validate(path)
    item = pystac.Item.from_file(str(path))
    assert item.id == "scene_x2" and PROCESSING_EXTENSION in item.stac_extensions
    proj = ProjectionExtension.ext(item)
    with rasterio.open(out) as ds:
        assert proj.code == "EPSG:26914" and proj.shape == [ds.height, ds.width] == [80, 80]
        assert proj.transform == list(ds.transform)[:6] and proj.bbox == list(ds.bounds)
    lon0, lat0, lon1, lat1 = item.bbox or []
    assert -100 < lon0 < lon1 < -99 and 46 < lat0 < lat1 < 48  # UTM 14N, 485000 E 5209000 N
    assert item.geometry is not None and item.geometry["type"] == "Polygon"
    p = item.properties
    sha = json.loads((checkpoint / "config.json").read_text())["sha256"]
    assert p["hndsr:checkpoint_sha256"] == sha and p["hndsr:scale"] == 2 and p["hndsr:seed"] == 7
    assert p["hndsr:steps"] == 0 and p["hndsr:model"] == "HNDSR" and "hndsr:samples" not in p
    assert p["processing:lineage"] == f"super-resolved x2 by HNDSR {p['hndsr:model_version']} from scene.tif"
    assert isinstance(p["processing:software"]["hndsr"], str) and p["processing:datetime"]
    data = item.assets["data"]
    assert data.href == "scene_x2.tif" and data.roles == ["data"]
    assert data.media_type in (pystac.MediaType.COG, pystac.MediaType.GEOTIFF)
    assert [b["data_type"] for b in data.extra_fields["bands"]] == ["uint16"] * 4
    assert Path(item.assets["source"].href) == src.resolve()
    assert [link.href for link in item.get_links("derived_from")] == ["https://example.com/items/scene.json"]


def test_no_item_with_no_stac_or_for_png(tmp_path: Path, checkpoint: Path) -> None:
    src = write_geotiff(tmp_path / "scene.tif", size=40)
    _sr(src, tmp_path / "a.tif", checkpoint, "--no-stac")
    _sr(src, tmp_path / "b.png", checkpoint)
    assert not list(tmp_path.glob("*.json"))


def test_a_raster_without_georeferencing_has_a_null_geometry(tmp_path: Path) -> None:
    out = tmp_path / "plain.tif"
    with rasterio.open(out, "w", driver="GTiff", width=16, height=8, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 8, 16), np.uint8))
    item = item_for_output(
        out, scale=4, model_version="v", checkpoint_sha256="0" * 64, steps=4, seed=1, samples=3, cog=False
    )
    stac_validate(write_item(item, item_path(out)))
    d = json.loads(item_path(out).read_text())
    assert d["geometry"] is None and "bbox" not in d
    assert d["properties"]["proj:code"] is None and d["properties"]["proj:shape"] == [8, 16]
    assert d["properties"]["hndsr:samples"] == 3
    assert d["assets"]["data"]["type"] == pystac.MediaType.GEOTIFF


def _catalog_of_outputs(tmp_path: Path, checkpoint: Path) -> Path:
    """Two sr outputs with their Items, gathered into a self-contained Catalog at <tmp>/stac."""
    root = tmp_path / "stac"
    root.mkdir()
    for i, size in enumerate((48, 56)):
        src = write_geotiff(tmp_path / f"in{i}.tif", size=size)
        _sr(src, root / f"sr{i}.tif", checkpoint, "--seed", str(i))
    catalog = pystac.Catalog("hndsr-outputs", "Super-resolved scenes")
    for i in range(2):
        catalog.add_item(pystac.Item.from_file(str(root / f"sr{i}.json")))
    catalog.make_all_asset_hrefs_absolute()
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    stac_validate(root / "catalog.json")
    return root


def test_prepare_reads_the_items_sr_wrote(tmp_path: Path, checkpoint: Path) -> None:
    root = _catalog_of_outputs(tmp_path, checkpoint)
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    out = tmp_path / "processed"
    result = runner.invoke(
        app, ["prepare", "--src", str(root / "catalog.json"), "--out", str(out), "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    cat = pd.read_parquet(out / "catalog.parquet")
    assert set(cat["stac_item"]) == {"sr0", "sr1"} and set(cat["stac_asset"]) == {"data"}
    assert set(cat["source"]) == {"sr0.tif", "sr1.tif"}
    # One Item alone is a source too; a folder source has no Item.
    one = tmp_path / "one"
    result = runner.invoke(
        app, ["prepare", "--src", str(root / "sr1.json"), "--out", str(one), "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(one / "catalog.parquet")["stac_item"]) == {"sr1"}


def test_prepare_reads_a_catalog_on_s3(
    s3_server: EmbeddedS3, tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.settings.env().items():
        monkeypatch.setenv(key, value)
    root = _catalog_of_outputs(tmp_path, checkpoint)
    assert runner.invoke(app, ["data", "upload", str(root), "s3://hndsr/lake/stac"]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    out = tmp_path / "processed"
    args = ["prepare", "--src", "s3://hndsr/lake/stac/catalog.json", "--out", str(out)]
    result = runner.invoke(app, [*args, "--params", str(params), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    cat = pd.read_parquet(out / "catalog.parquet")
    assert set(cat["source"]) == {"s3://hndsr/lake/stac/sr0.tif", "s3://hndsr/lake/stac/sr1.tif"}
    assert set(cat["stac_item"]) == {"sr0", "sr1"}


def _item(tmp_path: Path, **changes: object) -> Path:
    d = pystac.Item("bad", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {}).to_dict(
        include_self_link=False
    )
    d["assets"] = {"img": {"href": "img.tif", "type": pystac.MediaType.GEOTIFF, "roles": ["data"]}}
    d.update(changes)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bbox": "everywhere"}, "is not a valid STAC document"),
        ({"type": "FeatureCollection"}, "is not a valid STAC document"),
        (
            {"assets": {"thumb": {"href": "t.png", "roles": ["thumbnail"]}}},
            "STAC Item 'bad' has no raster asset",
        ),
        (
            {"assets": {"meta": {"href": "m.xml", "type": "application/xml"}}},
            "STAC Item 'bad' has no raster asset",
        ),
    ],
)
def test_bad_stac_documents_are_a_clear_error_and_write_nothing(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    src = _item(tmp_path, **changes)
    out = tmp_path / "processed"
    result = runner.invoke(app, ["prepare", "--src", str(src), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
