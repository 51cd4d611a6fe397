"""Cloud-Optimized GeoTIFF outputs (hndsr.cog): in-memory and streamed writers, `hndsr sr` and --no-cog."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from hndsr.checkpoint import save_checkpoint
from hndsr.cog import COG_BLOCK, is_cog
from hndsr.errors import OutputValidationError
from hndsr.geotiff_stream import GeoTIFFRowWriter
from hndsr.image_write import encode_image, write_image
from hndsr.models.hndsr_model import HNDSR
from hndsr.raster import GeoInfo, Raster
from hndsr_cli import app

GEO = GeoInfo(crs="EPSG:32633", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), nodata=0.0)
NAMES = ("red", "green", "blue", "uncertainty")


def _raster(h: int, w: int, dtype: str = "uint16", geo: GeoInfo | None = GEO) -> Raster:
    data = np.random.default_rng(2).random((4, h, w)).astype(np.float32)
    return Raster(data=data, dtype=dtype, profile=geo, band_names=NAMES)


def _check_cog(path: Path, *, predictor: str, overviews: list[int]) -> None:
    assert is_cog(path)
    with rasterio.open(path) as ds:
        assert ds.block_shapes[0] == (COG_BLOCK, COG_BLOCK)
        assert ds.overviews(1) == overviews
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == predictor
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE"
        assert ds.descriptions == NAMES


@pytest.mark.parametrize(("dtype", "predictor"), [("uint16", "2"), ("float32", "3")])
def test_write_image_tif_is_a_cog_with_the_same_pixels_and_georeferencing(tmp_path, dtype, predictor) -> None:
    raster = _raster(1100, 700)
    write_image(tmp_path / "cog.tif", raster, dtype=dtype)
    write_image(tmp_path / "plain.tif", raster, dtype=dtype, cog=False)
    _check_cog(tmp_path / "cog.tif", predictor=predictor, overviews=[2])  # down to a side under 512 px
    assert not is_cog(tmp_path / "plain.tif")
    with rasterio.open(tmp_path / "cog.tif") as c, rasterio.open(tmp_path / "plain.tif") as p:
        assert p.overviews(1) == []
        assert (c.crs, c.transform, c.nodata, c.dtypes) == (p.crs, p.transform, p.nodata, p.dtypes)
        assert c.colorinterp[3] == rasterio.enums.ColorInterp.undefined  # the 4th band is no alpha
        np.testing.assert_array_equal(c.read(), p.read())
    assert sorted(q.name for q in tmp_path.iterdir()) == ["cog.tif", "plain.tif"]  # no sidecars, no temps


def test_encode_image_geotiff_bytes_are_a_cog_even_small_and_ungeoreferenced(tmp_path) -> None:
    raster = _raster(40, 60, dtype="uint8", geo=None)
    (tmp_path / "small.tif").write_bytes(encode_image(raster, "geotiff"))
    _check_cog(tmp_path / "small.tif", predictor="2", overviews=[])
    (tmp_path / "plain.tif").write_bytes(encode_image(raster, "geotiff", cog=False))
    with rasterio.open(tmp_path / "small.tif") as c, rasterio.open(tmp_path / "plain.tif") as p:
        assert c.crs is None and c.transform == p.transform
        np.testing.assert_array_equal(c.read(), p.read())


def _stream(path: Path, raster: Raster, *, cog: bool, chunk: int = 300) -> None:
    with GeoTIFFRowWriter(
        path,
        bands=raster.bands,
        height=raster.height,
        width=raster.width,
        like=raster,
        profile=raster.profile,
        band_names=raster.band_names,
        cog=cog,
    ) as writer:
        for y0 in range(0, raster.height, chunk):
            writer.write(y0, raster.data[:, y0 : y0 + chunk])


def test_streamed_cog_equals_write_image_and_no_cog_stays_plain(tmp_path) -> None:
    raster = _raster(1300, 1100)
    _stream(tmp_path / "streamed.tif", raster, cog=True)
    write_image(tmp_path / "memory.tif", raster)
    _check_cog(tmp_path / "streamed.tif", predictor="2", overviews=[2, 4])
    with rasterio.open(tmp_path / "streamed.tif") as s, rasterio.open(tmp_path / "memory.tif") as m:
        assert s.profile == m.profile and s.descriptions == m.descriptions and s.nodata == 0.0
        np.testing.assert_array_equal(s.read(), m.read())
        np.testing.assert_array_equal(s.read(1, out_shape=(325, 225)), m.read(1, out_shape=(325, 225)))
    _stream(tmp_path / "plain.tif", raster, cog=False)
    assert not is_cog(tmp_path / "plain.tif")
    with rasterio.open(tmp_path / "plain.tif") as p:
        assert p.overviews(1) == [] and p.descriptions == NAMES
    assert sorted(q.name for q in tmp_path.iterdir()) == ["memory.tif", "plain.tif", "streamed.tif"]


def test_streamed_cog_failure_leaves_nothing(tmp_path) -> None:
    raster = _raster(600, 520)
    with (
        pytest.raises(OutputValidationError, match="rows"),
        GeoTIFFRowWriter(
            tmp_path / "o.tif", bands=4, height=600, width=520, like=raster, profile=GEO, band_names=NAMES
        ) as writer,
    ):
        writer.write(0, raster.data[:, :300])
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def checkpoint(tiny_model_config, tmp_path) -> Path:
    torch.manual_seed(3)
    save_checkpoint(
        HNDSR(**tiny_model_config).eval(), tmp_path / "ckpt", stages=["autoencoder", "operator", "diffusion"]
    )
    return tmp_path / "ckpt"


@pytest.mark.parametrize(("size", "overviews"), [((30, 44), []), ((160, 140), [2])])
def test_hndsr_sr_writes_a_cog_and_no_cog_a_plain_geotiff(checkpoint, tmp_path, size, overviews) -> None:
    write_image(tmp_path / "in.tif", _raster(*size, dtype="uint8"))
    args = [
        "--scale",
        "4",
        "--steps",
        "0",
        "--tile",
        "256",
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
    ]
    for name, extra in (("cog.tif", []), ("plain.tif", ["--no-cog"])):
        result = CliRunner().invoke(
            app, ["sr", str(tmp_path / "in.tif"), str(tmp_path / name), *args, *extra]
        )
        assert result.exit_code == 0, result.output
    _check_cog(tmp_path / "cog.tif", predictor="2", overviews=overviews)
    assert not is_cog(tmp_path / "plain.tif")
    with rasterio.open(tmp_path / "cog.tif") as c, rasterio.open(tmp_path / "plain.tif") as p:
        assert p.overviews(1) == [] and p.descriptions == NAMES
        assert (c.crs, c.nodata, c.transform) == (p.crs, p.nodata, p.transform)
        assert c.transform.a == pytest.approx(2.5)  # 10 m / 4
        np.testing.assert_array_equal(c.read(), p.read())
