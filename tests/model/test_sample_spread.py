"""The uncertainty estimate's arithmetic: mean and spread of K draws, their seeds, the sample-count rules."""

from __future__ import annotations

import pytest
import torch

from hndsr.errors import InputError
from hndsr.model_pass import MAX_SAMPLES, check_samples, mean_and_spread, sample_seeds


def test_mean_and_spread_of_draws() -> None:
    draws = torch.stack([torch.full((1, 3, 2, 2), v) for v in (0.2, 0.4, 0.6)])
    draws[:, :, 2] = 0.5  # the blue band agrees in every draw
    out = mean_and_spread(draws)
    assert out.shape == (1, 4, 2, 2)
    assert torch.allclose(out[:, :2], torch.full((1, 2, 2, 2), 0.4))
    assert torch.allclose(out[:, 2], torch.full((1, 2, 2), 0.5))
    assert torch.allclose(out[:, 3], torch.full((1, 2, 2), 0.2 * 2 / 3))  # std 0.2 on R, G; 0 on B


def test_identical_draws_have_no_spread() -> None:
    draws = torch.rand(1, 2, 3, 5, 5).expand(4, -1, -1, -1, -1)
    assert float(mean_and_spread(draws)[:, 3].abs().max()) == 0.0


def test_seeds_start_at_the_seed_and_stay_in_range() -> None:
    assert sample_seeds(7, 3) == [7, 8, 9]
    assert sample_seeds(2**32 - 1, 2) == [2**32 - 1, 0]


@pytest.mark.parametrize(
    ("samples", "steps", "match"), [(0, 10, "samples"), (MAX_SAMPLES + 1, 10, "samples"), (4, 0, "steps")]
)
def test_bad_sample_counts(samples: int, steps: int, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_samples(samples, steps)


def test_one_sample_is_the_plain_path() -> None:
    check_samples(1, 0)
    check_samples(2, 10)


def test_a_pixels_variance_is_pooled_with_its_neighbours() -> None:
    """One pixel where the draws disagree: its variance spreads over its 3 x 3 neighbourhood only."""
    draws = torch.zeros(2, 1, 3, 7, 7)
    draws[1, :, :, 3, 3] = 0.6  # var = 0.18 at (3, 3), in every band
    spread = mean_and_spread(draws)[0, 3]
    expected = (0.18 / 9) ** 0.5
    assert torch.allclose(spread[2:5, 2:5], torch.full((3, 3), expected))
    assert float(spread[:, :2].abs().max()) == float(spread[:, 5:].abs().max()) == 0.0
