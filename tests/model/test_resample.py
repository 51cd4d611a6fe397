import numpy as np
import pytest
import torch
from PIL import Image

from hndsr.errors import ImageTooSmallError, ScaleError
from hndsr.resample import check_scale, degrade, lr_size, resize, sr_size


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((400, 400), (100, 100)),
        ((400, 400), (160, 160)),
        ((97, 131), (33, 40)),
        ((37, 50), (93, 125)),
        ((64, 64), (64, 64)),
    ],
)
def test_resize_matches_pillow_bicubic(src: tuple[int, int], dst: tuple[int, int]) -> None:
    a = np.random.default_rng(0).random(src).astype(np.float32)
    ref = np.asarray(Image.fromarray(a, mode="F").resize((dst[1], dst[0]), Image.BICUBIC))
    out = resize(torch.from_numpy(a), dst).numpy()
    assert np.abs(ref - out).max() < 1e-5


def test_window_of_resize_equals_full_resize() -> None:
    x = torch.rand(3, 50, 60)
    full = resize(x, (173, 211))
    part = resize(x, (173, 211), rows=slice(40, 90), cols=slice(100, 180))
    assert torch.equal(full[:, 40:90, 100:180], part)


def test_constant_image_stays_constant() -> None:
    x = torch.full((3, 40, 40), 0.3)
    assert torch.allclose(resize(x, (13, 17)), torch.full((3, 13, 17), 0.3), atol=1e-6)


@pytest.mark.parametrize("scale", [2.0, 2.5, 3.0, 3.7, 4.0])
def test_degrade_sizes_for_any_scale(scale: float) -> None:
    hr = torch.rand(1, 3, 120, 90)
    lr = degrade(hr, scale)
    assert lr.shape[-2:] == lr_size((120, 90), scale)
    assert sr_size(tuple(lr.shape[-2:]), 1.0) == lr.shape[-2:]


def test_degrade_is_antialiased() -> None:
    # A pixel-level checkerboard is above the LR Nyquist limit: antialiasing averages it to grey.
    hr = torch.zeros(1, 1, 64, 64)
    hr[..., ::2, ::2] = 1.0
    hr[..., 1::2, 1::2] = 1.0
    lr = degrade(hr, 4.0)
    assert (lr - 0.5).abs().max() < 0.05


@pytest.mark.parametrize("bad", [1.0, 1.99, 4.01, float("nan"), float("inf"), -3.0])
def test_scale_outside_range_is_rejected(bad: float) -> None:
    with pytest.raises(ScaleError, match=r"between 2 and 4"):
        check_scale(bad)


def test_degrade_too_small() -> None:
    with pytest.raises(ImageTooSmallError):
        degrade(torch.rand(1, 3, 20, 20), 4.0)
