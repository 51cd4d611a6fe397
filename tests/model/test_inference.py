import numpy as np
import pytest
import torch

from hndsr.errors import ImageTooSmallError, InputError, OutputValidationError
from hndsr.inference import Upscaler, upscale_raster
from hndsr.model_pass import validate_output
from hndsr.models.hndsr_model import HNDSR
from hndsr.raster import GeoInfo, Raster


def test_untrained_model_is_exactly_bicubic(tiny_model_config) -> None:
    from hndsr.resample import resize

    lr = torch.rand(3, 30, 41)
    out = Upscaler(HNDSR(**tiny_model_config)).upscale(lr, scale=3.0)
    assert torch.allclose(out, resize(lr, (90, 123)).clamp(0, 1), atol=1e-5)


def test_corrupted_weights_never_produce_an_output(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config)
    with torch.no_grad():
        model.autoencoder.decoder_tail.bias.fill_(float("nan"))
    with pytest.raises(OutputValidationError, match="non-finite"):
        Upscaler(model).upscale(torch.rand(3, 16, 16), scale=2.0)


def test_validate_output_clamps_small_overshoot_and_refuses_garbage() -> None:
    assert float(validate_output(torch.tensor([-0.02, 1.03])).max()) == 1.0
    with pytest.raises(OutputValidationError, match="outside"):
        validate_output(torch.tensor([0.0, 7.0]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        values = torch.rand(3, 32, 32)
        values[1, 7, 9] = bad  # a single non-finite pixel is enough
        with pytest.raises(OutputValidationError, match="non-finite"):
            validate_output(values)


@pytest.mark.parametrize(
    ("lr", "kwargs", "error"),
    [
        (torch.rand(3, 4, 40), {"scale": 2.0}, ImageTooSmallError),
        (torch.rand(1, 40, 40), {"scale": 2.0}, InputError),
        (torch.full((3, 20, 20), float("nan")), {"scale": 2.0}, InputError),
        (torch.rand(3, 20, 20), {"scale": 2.0, "steps": 5000}, InputError),
        (torch.rand(3, 20, 20), {}, InputError),
    ],
)
def test_bad_inputs(tiny_model_config, lr, kwargs, error) -> None:
    with pytest.raises(error):
        Upscaler(HNDSR(**tiny_model_config)).upscale(lr, **kwargs)


def test_out_size_overrides_scale_for_non_integer_ratios(tiny_model_config) -> None:
    out = Upscaler(HNDSR(**tiny_model_config)).upscale(torch.rand(3, 33, 47), out_size=(100, 130))
    assert out.shape == (3, 100, 130)


def test_raster_bands_dtype_and_georeferencing(tiny_model_config) -> None:
    data = np.random.default_rng(0).random((5, 20, 24)).astype(np.float32)
    geo = GeoInfo(crs="EPSG:32633", transform=(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0), nodata=None)
    raster = Raster(data=data, dtype="uint16", profile=geo, band_names=("b", "g", "r", "nir", "swir"))
    out = upscale_raster(Upscaler(HNDSR(**tiny_model_config)), raster, scale=2.5)
    assert out.data.shape == (5, 50, 60) and out.dtype == "uint16"
    assert out.band_names == raster.band_names
    assert out.profile is not None and out.profile.transform[0] == pytest.approx(4.0)
    assert out.profile.transform[4] == pytest.approx(-4.0) and out.profile.transform[2] == 300000.0
