"""Tests of hndsr.image_quality: the remote-sensing SR evaluation protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hndsr.errors import InputError
from hndsr.image_quality import (
    PSNR_CAP_DB,
    QualityScores,
    border_for_scale,
    crop_border,
    ergas,
    psnr_y,
    rgb_to_y,
    sam,
    score_pair,
    ssim_y,
)

Y_GAIN = (65.481 + 128.553 + 24.966) / 255.0  # dY per unit of equal R=G=B change: 219/255


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------------------- rgb_to_y


def test_rgb_to_y_white_black_and_primaries() -> None:
    white, black = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    assert torch.allclose(rgb_to_y(white), torch.full((1, 2, 2), 235 / 255), atol=1e-6)
    assert torch.allclose(rgb_to_y(black), torch.full((1, 2, 2), 16 / 255), atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert rgb_to_y(red).item() == pytest.approx((16 + 65.481) / 255)


def test_rgb_to_y_keeps_layout() -> None:
    assert rgb_to_y(torch.rand(2, 3, 5, 7)).shape == (2, 1, 5, 7)
    assert rgb_to_y(torch.rand(3, 5, 7)).shape == (1, 5, 7)
    with pytest.raises(InputError):
        rgb_to_y(torch.rand(2, 4, 5, 7))


def test_crop_border() -> None:
    x = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    assert crop_border(x, 0) is x
    assert torch.equal(crop_border(x, 2), x[..., 2:4, 2:6])
    with pytest.raises(InputError):
        crop_border(x, 3)  # nothing left
    with pytest.raises(InputError):
        crop_border(x, -1)


def test_border_for_scale_rounds_up() -> None:
    assert [border_for_scale(s) for s in (2, 3, 4, 2.5, 1.1)] == [2, 3, 4, 3, 2]
    with pytest.raises(InputError):
        border_for_scale(0)


# ----------------------------------------------------------------------------------------------- PSNR


def test_identical_images_hit_the_caps() -> None:
    hr = _rand(2, 3, 32, 32)
    assert psnr_y(hr, hr.clone(), border=4) == PSNR_CAP_DB == 100.0
    assert ssim_y(hr, hr.clone(), border=4) == pytest.approx(1.0, abs=1e-9)
    assert sam(hr, hr.clone(), border=4) == pytest.approx(0.0, abs=1e-5)
    assert ergas(hr, hr.clone(), ratio=4, border=4) == 0.0


def test_psnr_of_known_gaussian_noise_on_y() -> None:
    # Equal noise on R, G, B of a grey image moves only Y; scaled so that Y gets sigma = 0.01 -> 40 dB.
    hr = torch.full((1, 3, 256, 256), 0.5)
    g = torch.Generator().manual_seed(3)
    noise = 0.01 / Y_GAIN * torch.randn(1, 1, 256, 256, generator=g)
    sr = hr + noise.expand(-1, 3, -1, -1)
    assert psnr_y(sr, hr, border=0) == pytest.approx(40.0, abs=0.2)


def test_psnr_against_hand_computed_value() -> None:
    # 4x4 black image; one pixel grey 0.5 in sr: dY = 0.5 * 219/255 = 0.4294117647,
    # MSE = 0.4294117647^2 / 16 = 0.0115246539, PSNR = -10 log10(MSE) = 19.3837
    hr = torch.zeros(1, 3, 4, 4)
    sr = hr.clone()
    sr[0, :, 1, 2] = 0.5
    assert psnr_y(sr, hr, border=0) == pytest.approx(19.383721, abs=1e-5)
    assert psnr_y(sr[0], hr[0], border=0) == pytest.approx(19.383721, abs=1e-5)  # (3, H, W) too


def test_psnr_is_mean_of_per_image_psnr() -> None:
    hr = _rand(2, 3, 24, 24)
    sr = torch.stack([_noisy(hr[0], 0.01), _noisy(hr[1], 0.1)])
    per_image = [psnr_y(sr[i], hr[i], border=0) for i in range(2)]
    assert psnr_y(sr, hr, border=0) == pytest.approx(sum(per_image) / 2, abs=1e-9)
    pooled_mse = (rgb_to_y(sr.double()) - rgb_to_y(hr.double())).pow(2).mean().item()
    assert psnr_y(sr, hr, border=0) != pytest.approx(-10 * math.log10(pooled_mse), abs=0.1)


def test_border_crop_hides_a_corrupted_border() -> None:
    hr = _rand(1, 3, 40, 40)
    sr = 1.0 - hr  # everything wrong ...
    sr[..., 4:-4, 4:-4] = hr[..., 4:-4, 4:-4]  # ... except the interior
    assert psnr_y(sr, hr, border=0) < 20
    assert psnr_y(sr, hr, border=4) == PSNR_CAP_DB
    assert ssim_y(sr, hr, border=0) < 0.99
    assert ssim_y(sr, hr, border=4) == pytest.approx(1.0, abs=1e-9)
    assert ergas(sr, hr, ratio=4, border=4) == 0.0
    assert ergas(sr, hr, ratio=4, border=0) > 1.0


# ----------------------------------------------------------------------------------------------- SSIM


def test_ssim_matches_scikit_image() -> None:
    # Golden values from scikit-image 0.26 on the same Y planes:
    # structural_similarity(y_sr, y_hr, data_range=1.0, gaussian_weights=True, sigma=1.5,
    #                       use_sample_covariance=False)
    hr = np.random.default_rng(5).random((3, 40, 48))
    sr = np.clip(hr + 0.05 * np.random.default_rng(6).standard_normal(hr.shape), 0, 1)
    sr_t, hr_t = torch.from_numpy(sr), torch.from_numpy(hr)
    assert ssim_y(sr_t, hr_t, border=0) == pytest.approx(0.9862865379891601, abs=1e-10)
    assert ssim_y(sr_t, hr_t, border=4) == pytest.approx(0.9858787034942377, abs=1e-10)
    # torchmetrics averages over reflect-padded borders (0.98579 here): not the published protocol.
    assert ssim_y(sr_t.float(), hr_t.float(), border=0) == pytest.approx(0.9862865379891601, abs=1e-6)


def test_ssim_symmetric_and_below_one_for_noise() -> None:
    hr = _rand(1, 3, 32, 32)
    sr = _noisy(hr, 0.05)
    s = ssim_y(sr, hr, border=2)
    assert s == pytest.approx(ssim_y(hr, sr, border=2), abs=1e-12)
    assert 0.0 < s < 1.0
    assert ssim_y(_noisy(hr, 0.2), hr, border=2) < s  # more noise, lower SSIM


# ----------------------------------------------------------------------------------------- ERGAS / SAM


def test_ergas_hand_computed_with_torchmetrics_ratio_convention() -> None:
    # Constant bands with constant offsets: RMSE_k = |offset_k|, mean_k = hr_k.
    means, offsets = (0.5, 0.25, 0.8), (0.05, -0.025, 0.04)
    hr = torch.tensor(means).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    sr = hr + torch.tensor(offsets).view(1, 3, 1, 1)
    rel = [(o / m) ** 2 for o, m in zip(offsets, means, strict=True)]  # 0.01, 0.01, 0.0025
    expected = 100 / 4 * math.sqrt(sum(rel) / 3)  # ratio = scale = 4 -> Wald's h/l = 1/4
    # rel 1e-6: the offsets went through float32 on their way in.
    assert ergas(sr, hr, ratio=4, border=0) == pytest.approx(expected, rel=1e-6)
    assert ergas(sr, hr, ratio=2, border=0) == pytest.approx(2 * expected, rel=1e-6)


def test_sam_is_in_degrees() -> None:
    hr = torch.zeros(1, 3, 8, 8)
    hr[:, 0] = 0.5  # spectrum (0.5, 0, 0)
    sr = hr.clone()
    sr[:, 1] = 0.5  # spectrum (0.5, 0.5, 0): 45 degrees away
    assert sam(sr, hr, border=0) == pytest.approx(45.0, abs=1e-9)
    assert sam(hr * 1.5, hr, border=0) == pytest.approx(0.0, abs=1e-5)  # brightness does not count


def test_sam_skips_black_pixels() -> None:
    hr = _rand(1, 3, 16, 16)
    hr[..., :4, :] = 0  # no-data rows
    sr = _noisy(hr, 0.02)
    sr[..., :4, :] = 0
    value = sam(sr, hr, border=0)
    assert math.isfinite(value)
    assert value == pytest.approx(sam(sr[..., 4:, :], hr[..., 4:, :], border=0), abs=1e-9)


# ------------------------------------------------------------------------------------------ score_pair


def test_score_pair_without_lpips() -> None:
    hr = _rand(2, 3, 48, 48)
    sr = _noisy(hr, 0.03)
    scores = score_pair(sr, hr, scale=4, lpips_model=None)
    assert isinstance(scores, QualityScores)
    assert math.isnan(scores.lpips)
    assert scores.psnr_y == pytest.approx(psnr_y(sr, hr, border=4))
    assert scores.ssim_y == pytest.approx(ssim_y(sr, hr, border=4))
    assert scores.ergas == pytest.approx(ergas(sr, hr, ratio=4, border=4))
    assert scores.sam == pytest.approx(sam(sr, hr, border=4))
    assert set(scores.as_dict()) == {"psnr_y", "ssim_y", "lpips", "ergas", "sam"}


def test_score_pair_crops_ceil_of_a_fractional_scale() -> None:
    hr = _rand(1, 3, 40, 40)
    sr = hr.clone()
    sr[..., :3, :] = 1 - hr[..., :3, :]  # 3 bad rows: hidden by ceil(2.5) = 3, not by 2
    assert score_pair(sr, hr, scale=2.5, lpips_model=None).psnr_y == PSNR_CAP_DB
    assert score_pair(sr, hr, scale=2.0, lpips_model=None).psnr_y < PSNR_CAP_DB


@pytest.mark.parametrize(
    ("sr", "hr"),
    [
        (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17)),  # shape mismatch
        (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)),  # not RGB
        (torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16)),  # non-finite
        (torch.ones(1, 3, 16, 16, dtype=torch.uint8), torch.ones(1, 3, 16, 16, dtype=torch.uint8)),
    ],
)
def test_bad_inputs_raise_input_error(sr: torch.Tensor, hr: torch.Tensor) -> None:
    with pytest.raises(InputError):
        psnr_y(sr, hr, border=0)


def test_ssim_needs_room_for_its_window() -> None:
    with pytest.raises(InputError):
        ssim_y(torch.rand(3, 16, 16), torch.rand(3, 16, 16), border=4)
