"""``samples`` K >= 2: the mean of K seeded draws plus their per-pixel std, through the engine, the
raster and streamed GeoTIFF outputs, and ``hndsr sr --samples``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from synthetic import synthetic_aerial
from typer.testing import CliRunner

from hndsr.checkpoint import save_checkpoint
from hndsr.errors import InputError
from hndsr.image_write import write_image
from hndsr.inference import Upscaler, upscale_raster
from hndsr.model_pass import UNCERTAINTY_BAND, mean_and_spread
from hndsr.models.hndsr_model import HNDSR
from hndsr.raster import GeoInfo, Raster
from hndsr.streaming import upscale_raster_to_geotiff
from hndsr.uncertainty_output import uncertainty_path
from hndsr_cli import app

GEO = GeoInfo(crs="EPSG:32633", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), nodata=None)
runner = CliRunner()


@pytest.fixture(scope="module")
def model() -> HNDSR:
    from synthetic import TINY_MODEL

    torch.manual_seed(3)
    m = HNDSR(**{k: dict(v) for k, v in TINY_MODEL.items()})
    with torch.no_grad():  # an untrained model is exactly bicubic: perturb it so the noise matters
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def _raster(h: int, w: int, bands: int, dtype: str = "uint16") -> Raster:
    data = np.random.default_rng(1).random((bands, h, w)).astype(np.float32)
    return Raster(data=data, dtype=dtype, profile=GEO, band_names=("red", "green", "blue", "nir")[:bands])


def test_k_draws_are_the_single_sample_outputs_of_consecutive_seeds(model) -> None:
    lr = torch.rand(3, 24, 28)
    upscaler = Upscaler(model, tile=0)  # one tile: the spread is exactly that of the whole images
    out = upscaler.upscale(lr, scale=2.0, steps=2, seed=5, samples=3)
    singles = [upscaler.upscale(lr, scale=2.0, steps=2, seed=s) for s in (5, 6, 7)]
    assert out.shape == (4, 48, 56)
    torch.testing.assert_close(out, mean_and_spread(torch.stack(singles)[:, None])[0], rtol=0, atol=1e-6)
    assert float(out[3].max()) > 0.0 and float(out[3].max()) <= 0.5  # the draws differ, within [0, 1]


def test_tiled_and_streamed_draws_keep_the_mean_and_are_deterministic(model) -> None:
    lr = torch.rand(3, 30, 26)
    upscaler = Upscaler(model, tile=32, overlap=8, halo=8)
    out = upscaler.upscale(lr, scale=3.0, steps=2, seed=9, samples=2)
    singles = torch.stack([upscaler.upscale(lr, scale=3.0, steps=2, seed=s) for s in (9, 10)])
    torch.testing.assert_close(out[:3], singles.mean(0), rtol=0, atol=1e-5)  # blending is linear
    assert torch.equal(out, upscaler.upscale(lr, scale=3.0, steps=2, seed=9, samples=2))  # seeded
    assert not torch.equal(out, upscaler.upscale(lr, scale=3.0, steps=2, seed=10, samples=2))
    rows = torch.cat([r for _, r in upscaler.upscale_rows(lr, scale=3.0, steps=2, seed=9, samples=2)], 1)
    assert torch.equal(rows, out)
    # samples=1 is today's path: the very same pixels
    assert torch.equal(
        upscaler.upscale(lr, scale=3.0, steps=2, seed=9, samples=1),
        upscaler.upscale(lr, scale=3.0, steps=2, seed=9),
    )


@pytest.mark.parametrize(("samples", "steps"), [(0, 2), (17, 2), (-3, 2), (4, 0)])
def test_bad_sample_counts_are_input_errors(model, tmp_path, samples, steps) -> None:
    upscaler = Upscaler(model)
    with pytest.raises(InputError, match="samples"):
        upscaler.upscale(torch.rand(3, 16, 16), scale=2.0, steps=steps, samples=samples)
    with pytest.raises(InputError, match="samples"):
        upscale_raster_to_geotiff(
            upscaler, _raster(16, 16, 3), tmp_path / "o.tif", scale=2.0, steps=steps, samples=samples
        )
    assert list(tmp_path.iterdir()) == []


def test_uncertainty_band_is_last_with_georeferencing_whole_and_streamed(model, tmp_path) -> None:
    upscaler = Upscaler(model, tile=48, overlap=8, halo=8)
    raster = _raster(21, 19, 4)  # NIR carried: the uncertainty goes after it
    out = upscale_raster(upscaler, raster, scale=2.5, steps=2, seed=1, samples=3)
    assert out.data.shape == (5, 52, 48) and out.dtype == "uint16"
    assert out.band_names == ("red", "green", "blue", "nir", UNCERTAINTY_BAND)
    assert out.profile is not None and out.profile.transform[0] == pytest.approx(10.0 * 19 / 48)
    memory, streamed = tmp_path / "memory.tif", tmp_path / "streamed.tif"
    write_image(memory, out)
    upscale_raster_to_geotiff(upscaler, raster, streamed, scale=2.5, steps=2, seed=1, samples=3)
    with rasterio.open(memory) as x, rasterio.open(streamed) as y:
        assert x.profile == y.profile and x.descriptions == y.descriptions
        assert y.count == 5 and y.dtypes[4] == "uint16" and y.descriptions[4] == UNCERTAINTY_BAND
        assert y.crs.to_epsg() == 32633 and y.transform.a == pytest.approx(10.0 * 19 / 48)
        np.testing.assert_array_equal(x.read(), y.read())
        spread = y.read(5)
    # Stored with the image bands' scaling: value / 65535 is the std in reflectance units.
    np.testing.assert_allclose(spread / 65535.0, out.data[4], atol=1 / 65535)
    assert 0 < spread.max() <= 65535 // 2 + 1


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return save_checkpoint(
        model, tmp_path_factory.mktemp("ckpt") / "tiny", stages=["autoencoder", "operator", "diffusion"]
    )


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "in" / "lr.png"
    path.parent.mkdir()
    Image.fromarray(synthetic_aerial((20, 24), 4)).save(path)
    return path


def test_cli_png_output_gets_a_16_bit_uncertainty_png(checkpoint, source, tmp_path) -> None:
    out = tmp_path / "out" / "sr.png"
    out.parent.mkdir()
    args = ["sr", str(source), str(out), "--checkpoint", str(checkpoint), "--steps", "2", "--samples", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert uncertainty_path(out) == out.parent / "sr.uncertainty.png"
    with Image.open(out) as image, Image.open(uncertainty_path(out)) as spread:
        assert image.mode == "RGB" and image.size == (96, 80)
        assert spread.mode.startswith("I;16") and spread.size == (96, 80)
        values = np.asarray(spread)
    assert 0 < values.max() <= 65535 // 2 + 1
    again = tmp_path / "out" / "again.png"
    assert runner.invoke(app, [*args[:2], str(again), *args[3:]]).exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # same seed and K: the same image
    assert uncertainty_path(again).read_bytes() == uncertainty_path(out).read_bytes()


def test_cli_geotiff_output_gets_the_uncertainty_band(checkpoint, source, tmp_path) -> None:
    out = tmp_path / "sr.tif"
    result = runner.invoke(
        app, ["sr", str(source), str(out), "--checkpoint", str(checkpoint), "--steps", "2", "--samples", "2"]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.count == 4 and ds.descriptions == ("red", "green", "blue", UNCERTAINTY_BAND)
        assert ds.dtypes == ("uint8",) * 4
    assert not uncertainty_path(out).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "17"], r"\[2, 16\]"),
        (["--samples", "0"], r"\[2, 16\]"),
        (["--samples", "4", "--steps", "0"], "steps"),
    ],
)
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_cli_bad_samples_are_usage_errors_writing_nothing(
    checkpoint, source, tmp_path, args, message, suffix
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner.invoke(
        app, ["sr", str(source), str(out_dir / f"sr{suffix}"), "--checkpoint", str(checkpoint), *args]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and re.search(message, result.output)
    assert list(out_dir.iterdir()) == []
