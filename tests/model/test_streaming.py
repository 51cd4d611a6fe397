"""Streamed GeoTIFF output (hndsr.streaming) equals the in-memory engine + writer, in bounded memory."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch

from hndsr.errors import OutputValidationError, UnsupportedFormatError
from hndsr.geotiff_stream import GeoTIFFRowWriter
from hndsr.image_read import read_image
from hndsr.image_write import write_image
from hndsr.inference import Upscaler, upscale_raster
from hndsr.models.hndsr_model import HNDSR
from hndsr.raster import GeoInfo, Raster
from hndsr.streaming import upscale_raster_to_geotiff
from hndsr.tiling import BandStitcher, Stitcher, plan_tiles

GEO = GeoInfo(crs="EPSG:32633", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), nodata=0.0)


@pytest.fixture
def model(tiny_model_config) -> HNDSR:
    torch.manual_seed(3)
    m = HNDSR(**tiny_model_config)
    with torch.no_grad():  # an untrained model is exactly bicubic: perturb it so tiles matter
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def _raster(h: int, w: int, bands: int, dtype: str = "uint16") -> Raster:
    data = np.random.default_rng(1).random((bands, h, w)).astype(np.float32)
    names = ("red", "green", "blue", "nir", "swir")[:bands]
    return Raster(data=data, dtype=dtype, profile=GEO, band_names=names)


def _both(upscaler, raster, tmp_path: Path, **kw) -> tuple[Path, Path, list[BandStitcher]]:
    memory = tmp_path / "memory.tif"
    write_image(memory, upscale_raster(upscaler, raster, **kw))
    streamed = tmp_path / "streamed.tif"
    bands: list[BandStitcher] = []
    upscale_raster_to_geotiff(upscaler, raster, streamed, band=bands.append, **kw)
    return memory, streamed, bands


def _same_file(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert (x.count, x.height, x.width, x.dtypes) == (y.count, y.height, y.width, y.dtypes)
        assert x.crs == y.crs and x.transform == y.transform and x.nodata == y.nodata
        assert x.descriptions == y.descriptions and x.profile == y.profile
        np.testing.assert_array_equal(x.read(), y.read())


@pytest.mark.parametrize(
    ("steps", "scale", "size", "bands"),
    [
        (0, 2.5, (37, 53), 4),  # deterministic, non-integer scale, non-square, NIR carried
        (2, 3.0, (41, 30), 3),  # seeded diffusion
    ],
)
def test_streamed_geotiff_equals_in_memory(model, tmp_path, steps, scale, size, bands) -> None:
    upscaler = Upscaler(model, tile=48, overlap=8, halo=8)
    raster = _raster(*size, bands)
    memory, streamed, band = _both(upscaler, raster, tmp_path, scale=scale, steps=steps, seed=7)
    out_h = round(size[0] * scale)
    tiles = plan_tiles(out_h + (-out_h) % 4, round(size[1] * scale) // 4 * 4 + 4, tile=48, overlap=8, halo=8)
    assert len({t.y0 for t in tiles}) >= 3  # several rows of tiles
    _same_file(memory, streamed)
    assert band[0].total.shape[1] == band[0].rows <= 48 < out_h  # the tile height, never the output's


def test_batched_tiles_and_geotiff_strips(model, tmp_path, monkeypatch) -> None:
    # 4-tile batches straddle rows of tiles; > 512 rows: several 256-row strips; float32 output;
    # finished rows handed on 20 at a time.
    monkeypatch.setattr("hndsr.inference.ROW_CHUNK", 20)
    upscaler = Upscaler(model, tile=96, overlap=8, halo=8, batch_size=4)
    raster = _raster(140, 132, 4, dtype="float32")
    memory, streamed, _ = _both(upscaler, raster, tmp_path, scale=4.0, steps=0)
    _same_file(memory, streamed)
    assert read_image(streamed).data.shape == (4, 560, 528)


def _drain(band: BandStitcher, until: int, chunk: int = 50) -> list[tuple[int, torch.Tensor]]:
    out = []
    while (rows := band.pop(until, chunk)) is not None:
        out.append(rows)
    return out


def test_band_is_bounded_by_tile_height_times_width() -> None:
    # A tall canvas: the in-memory Stitcher holds every row, the band only the tallest tile.
    torch.manual_seed(0)
    h, w, overlap, halo = 400, 96, 8, 8
    tiles = plan_tiles(h, w, tile=64, overlap=overlap, halo=halo)
    values = [torch.rand(3, t.height, t.width) for t in tiles]
    whole = Stitcher(3, h, w, overlap=overlap, halo=halo)
    band = BandStitcher(3, h, w, rows=64, overlap=overlap, halo=halo)
    rows: list[tuple[int, torch.Tensor]] = []
    for t, v in zip(tiles, values, strict=True):
        whole.add(t, v)
        rows += _drain(band, t.y0)
        band.add(t, v)
        assert band.total.shape == (3, 64, w)  # allocated once, never grown
    rows += _drain(band, h)
    assert [y for y, _ in rows] == [sum(r.shape[1] for _, r in rows[:i]) for i in range(len(rows))]
    assert all(r.shape[1] <= 50 for _, r in rows)  # handed on in chunks
    assert torch.equal(torch.cat([r for _, r in rows], dim=1), whole.result())
    assert band.band_bytes == 64 * w * 4 * 4 < 3 * h * w * 4 / 4  # the whole canvas in float32


def test_band_refuses_tiles_out_of_order_and_gaps() -> None:
    tiles = plan_tiles(200, 64, tile=64, overlap=8, halo=8)
    band = BandStitcher(3, 200, 64, rows=64, overlap=8, halo=8)

    def v(t):
        return torch.rand(3, t.height, t.width)

    band.add(tiles[0], v(tiles[0]))
    _drain(band, tiles[1].y0)
    band.add(tiles[1], v(tiles[1]))
    with pytest.raises(ValueError, match="already handed back"):
        band.add(tiles[0], v(tiles[0]))
    with pytest.raises(ValueError, match="pop the finished rows"):
        band.add(tiles[-1], v(tiles[-1]))
    with pytest.raises(RuntimeError, match="uncovered"):  # a row of tiles skipped: never zeros
        _drain(band, tiles[-1].y0)


def test_peak_traced_memory_is_a_band_not_a_canvas(model, tmp_path) -> None:
    import tracemalloc

    # numpy allocations (quantised strips, validation) are traced; torch's are the band, checked above.
    upscaler = Upscaler(model, tile=64, overlap=8, halo=8)
    raster = _raster(720, 24, 4, dtype="uint8")  # 2880 x 96 output, 4 bands
    upscale_raster_to_geotiff(upscaler, raster, tmp_path / "s.tif", scale=4.0, steps=0)  # warm caches
    peaks = []
    for write in (
        lambda: upscale_raster_to_geotiff(upscaler, raster, tmp_path / "s.tif", scale=4.0, steps=0),
        lambda: write_image(tmp_path / "m.tif", upscale_raster(upscaler, raster, scale=4.0, steps=0)),
    ):
        tracemalloc.start()
        write()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    whole_uint8_output = 4 * 2880 * 96
    assert peaks[1] >= whole_uint8_output  # the in-memory writer's quantised canvas
    assert peaks[0] < whole_uint8_output / 2, peaks  # strips, never the canvas


def test_writer_refuses_png_non_finite_rows_and_missing_rows(tmp_path) -> None:
    like = _raster(10, 10, 3, dtype="uint8")
    kw: dict[str, Any] = {
        "bands": 3,
        "height": 10,
        "width": 8,
        "like": like,
        "profile": None,
        "band_names": (),
    }
    with pytest.raises(UnsupportedFormatError, match="tif"):
        GeoTIFFRowWriter(tmp_path / "o.png", **kw)
    with (
        pytest.raises(OutputValidationError, match="non-finite"),
        GeoTIFFRowWriter(tmp_path / "o.tif", **kw) as w,
    ):
        w.write(0, np.full((3, 4, 8), np.nan, np.float32))
    with (
        pytest.raises(OutputValidationError, match="4 of 10 rows"),
        GeoTIFFRowWriter(tmp_path / "o.tif", **kw) as w,
    ):
        w.write(0, np.zeros((3, 4, 8), np.float32))
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_hndsr_sr_streams_tif_outputs_with_the_same_pixels(model, tmp_path) -> None:
    from typer.testing import CliRunner

    from hndsr.checkpoint import load_checkpoint, save_checkpoint
    from hndsr_cli import app

    save_checkpoint(model, tmp_path / "ckpt", stages=["autoencoder", "operator", "diffusion"])
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    raster = _raster(30, 44, 4, dtype="uint8")
    write_image(tmp_path / "in.tif", raster)
    args = ["--scale", "3", "--steps", "0", "--tile", "48", "--overlap", "8", "--halo", "8"]
    args += ["--checkpoint", str(tmp_path / "ckpt"), "--device", "cpu"]
    result = CliRunner().invoke(app, ["sr", str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), *args])
    assert result.exit_code == 0, result.output
    assert "(132x90, x3, steps=0)" in result.output
    expected = upscale_raster(
        Upscaler(loaded, tile=48, overlap=8, halo=8), read_image(tmp_path / "in.tif"), scale=3.0, steps=0
    )
    write_image(tmp_path / "memory.tif", expected)
    _same_file(tmp_path / "memory.tif", tmp_path / "out.tif")
