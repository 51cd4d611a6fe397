"""DDIM scheduler against closed-form values (Song et al. 2021, eqs. 4, 12 and 16).

The exact-value tests use float64 tensors so that the tolerance checks the algebra, not float32 rounding
(at t = 999, 1/sqrt(a_t) ~ 15 amplifies the rounding of x_t); the sampling-loop tests run in float32.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hndsr.models.scheduler import DDIMConfig, DDIMScheduler, DDIMStepOutput

T = 1000
F64 = torch.float64


def _alphas_cumprod64(config: DDIMConfig) -> list[float]:
    """a_t by hand (pure Python floats), independent of the implementation."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = [config.beta_start + (config.beta_end - config.beta_start) * i / (n - 1) for i in range(n)]
    elif config.beta_schedule == "scaled_linear":
        lo, hi = math.sqrt(config.beta_start), math.sqrt(config.beta_end)
        betas = [(lo + (hi - lo) * i / (n - 1)) ** 2 for i in range(n)]
    else:

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return out


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _oracle_output(
    prediction_type: str, x_t: torch.Tensor, x0: torch.Tensor, a_t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(model output a perfect network would give at x_t for this x_0, the eps it implies)."""
    eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    if prediction_type == "epsilon":
        return eps, eps
    if prediction_type == "v_prediction":
        return math.sqrt(a_t) * eps - math.sqrt(1 - a_t) * x0, eps
    return x0, eps


# ----------------------------------------------------------------------------- config / betas


def test_defaults_are_stable_diffusion_scaled_linear() -> None:
    cfg = DDIMConfig()
    assert (cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end) == (1000, 0.00085, 0.012)
    assert (cfg.beta_schedule, cfg.prediction_type, cfg.clip_sample) == ("scaled_linear", "epsilon", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_train_timesteps = 10  # type: ignore[misc]
    assert isinstance(DDIMScheduler().config, DDIMConfig)
    assert not isinstance(DDIMScheduler(), torch.nn.Module)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_betas_match_formula(schedule: str) -> None:
    cfg = DDIMConfig(beta_start=0.0001, beta_end=0.02, beta_schedule=schedule)
    sched = DDIMScheduler(cfg)
    i = torch.arange(T, dtype=F64)
    if schedule == "linear":
        expected = 0.0001 + (0.02 - 0.0001) * i / (T - 1)
    else:
        expected = (math.sqrt(0.0001) + (math.sqrt(0.02) - math.sqrt(0.0001)) * i / (T - 1)) ** 2
    assert sched.betas.dtype == torch.float32
    torch.testing.assert_close(sched.betas.double(), expected, rtol=1e-6, atol=1e-9)
    assert sched.betas[0].item() == pytest.approx(0.0001, rel=1e-6)
    assert sched.betas[-1].item() == pytest.approx(0.02, rel=1e-6)


def test_cosine_betas_match_nichol_dhariwal() -> None:
    sched = DDIMScheduler(DDIMConfig(beta_schedule="cosine"))
    expected = _alphas_cumprod64(DDIMConfig(beta_schedule="cosine"))
    torch.testing.assert_close(
        sched.alphas_cumprod.double(), torch.tensor(expected, dtype=F64), rtol=1e-5, atol=0
    )
    assert sched.betas.max().item() == pytest.approx(0.999, rel=1e-6)  # the cap is hit at t = T-1


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_alphas_cumprod_is_the_cumulative_product_and_strictly_decreasing(schedule: str) -> None:
    cfg = DDIMConfig(beta_schedule=schedule)
    sched = DDIMScheduler(cfg)
    assert sched.alphas_cumprod.dtype == torch.float32
    assert sched.alphas_cumprod.shape == (T,)
    torch.testing.assert_close(
        sched.alphas_cumprod.double(), torch.cumprod(sched.alphas.double(), 0), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        sched.alphas_cumprod.double(), torch.tensor(_alphas_cumprod64(cfg), dtype=F64), rtol=1e-6, atol=0
    )
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())
    assert 0 < sched.alphas_cumprod[-1].item() < sched.alphas_cumprod[0].item() < 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train_timesteps": 0},
        {"num_train_timesteps": 10.0},
        {"beta_schedule": "squaredcos"},
        {"prediction_type": "x0"},
        {"beta_start": 0.0},
        {"beta_end": 1.0},
        {"beta_start": 0.02, "beta_end": 0.01},
        {"clip_sample": 0.0},
        {"clip_sample": -1.0},
        {"clip_sample": float("nan")},
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DDIMConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- timesteps


def test_set_timesteps_50_trailing() -> None:
    sched = DDIMScheduler()
    ts = sched.set_timesteps(50)
    assert ts is sched.timesteps
    assert ts.dtype == torch.int64
    assert ts.tolist() == list(range(999, -1, -20))  # 999, 979, ..., 19
    assert len(set(ts.tolist())) == 50
    assert ts[0].item() == T - 1 and ts[-1].item() >= 0
    assert bool((ts[1:] < ts[:-1]).all())
    assert sched.num_inference_steps == 50


def test_trailing_spacing_matches_numpy_formula_where_it_is_exact() -> None:
    # diffusers: np.round(np.arange(T, 0, -T / n)) - 1; no float ties for these n.
    sched = DDIMScheduler()
    for n in (1, 2, 3, 7, 10, 25, 50, 100, 333, 999, 1000):
        expected = [round(T - i * T / n) - 1 for i in range(n)]
        assert sched.set_timesteps(n).tolist() == expected, n


def test_rounding_ties_go_to_even() -> None:
    # T=1000, n=16: 1000 * 13/16 = 812.5 -> 812 (even), 1000 * 15/16 = 937.5 -> 938 (even); minus one each.
    ts = DDIMScheduler().set_timesteps(16).tolist()
    assert ts[1] == 937 and ts[3] == 811


def test_default_schedule_is_every_training_timestep() -> None:
    sched = DDIMScheduler()
    assert sched.timesteps.tolist() == list(range(T - 1, -1, -1))
    assert sched.previous_timestep(500) == 499
    assert sched.previous_timestep(0) == -1


@settings(max_examples=60, deadline=None)
@given(big_t=st.integers(1, 1200), data=st.data())
def test_set_timesteps_invariants(big_t: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, big_t))
    sched = DDIMScheduler(DDIMConfig(num_train_timesteps=big_t))
    ts = sched.set_timesteps(n).tolist()
    assert len(ts) == n == len(set(ts))
    assert ts[0] == big_t - 1
    assert all(a > b for a, b in itertools.pairwise(ts))
    assert 0 <= ts[-1] <= max(0, math.ceil(big_t / n))
    # previous_timestep walks exactly this list and ends at -1
    walked, t = [], ts[0]
    while t >= 0:
        walked.append(t)
        t = sched.previous_timestep(t)
    assert walked == ts


def test_strength_keeps_the_last_ceil_n_strength_timesteps() -> None:
    sched = DDIMScheduler()
    full = sched.set_timesteps(50).tolist()
    half = sched.set_timesteps(50, strength=0.5).tolist()
    assert len(half) == 25 and half == full[25:]
    assert sched.set_timesteps(10, strength=0.3).tolist() == sched.set_timesteps(10).tolist()[-3:]  # not 4
    assert len(sched.set_timesteps(50, strength=0.51)) == 26  # ceil(25.5)
    assert len(sched.set_timesteps(50, strength=1e-6)) == 1
    assert sched.set_timesteps(50, strength=1.0).tolist() == full
    sched.set_timesteps(50, strength=0.5)
    assert sched.previous_timestep(half[-1]) == -1
    with pytest.raises(ValueError, match="not in the current schedule"):
        sched.previous_timestep(full[0])  # cut away by strength


@pytest.mark.parametrize("n", [0, -1, T + 1])
def test_invalid_num_inference_steps(n: int) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().set_timesteps(n)


@pytest.mark.parametrize("bad", [50.0, True, "50"])
def test_non_int_num_inference_steps(bad: object) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().set_timesteps(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.0001, 2.0, float("nan")])
def test_invalid_strength(strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        DDIMScheduler().set_timesteps(50, strength=strength)


def test_previous_timestep_walks_the_list_and_ends_at_minus_one() -> None:
    sched = DDIMScheduler()
    ts = sched.set_timesteps(50).tolist()
    for cur, nxt in itertools.pairwise(ts):
        assert sched.previous_timestep(cur) == nxt
        assert sched.previous_timestep(torch.tensor(cur)) == nxt  # loop variables are 0-d tensors
    assert sched.previous_timestep(ts[-1]) == -1
    with pytest.raises(ValueError, match="not in the current schedule"):
        sched.previous_timestep(998)
    with pytest.raises(ValueError):
        sched.previous_timestep(1.5)  # type: ignore[arg-type]


def test_previous_timestep_is_looked_up_not_t_minus_t_over_n() -> None:
    # The replaced system used t - T // n. With n = 7: T // n = 142 but the gaps are 143 / 142.
    sched = DDIMScheduler()
    ts = sched.set_timesteps(7).tolist()
    assert ts == [999, 856, 713, 570, 428, 285, 142]
    assert sched.previous_timestep(999) == 856 != 999 - T // 7
    # and step() uses that a_prev: oracle eps at t=999 lands exactly on the closed form at t=856
    x0, eps = _randn(2, 3, seed=0), _randn(2, 3, seed=1)
    x_t = sched.add_noise(x0, eps, torch.tensor([999]))
    out = sched.step(eps, 999, x_t)
    a_prev = _alphas_cumprod64(sched.config)[856]
    torch.testing.assert_close(
        out.prev_sample, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0, atol=1e-10
    )


# ----------------------------------------------------------------------------- forward process


def test_add_noise_and_get_velocity_closed_form_per_batch() -> None:
    sched = DDIMScheduler()
    ac = _alphas_cumprod64(sched.config)
    x0, eps = _randn(3, 2, 4, 4, seed=2), _randn(3, 2, 4, 4, seed=3)
    ts = torch.tensor([0, 500, 999])
    noisy = sched.add_noise(x0, eps, ts)
    vel = sched.get_velocity(x0, eps, ts)
    for b, t in enumerate(ts.tolist()):
        a = ac[t]
        torch.testing.assert_close(
            noisy[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b], rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            vel[b], math.sqrt(a) * eps[b] - math.sqrt(1 - a) * x0[b], rtol=0, atol=1e-12
        )
    # scalar timesteps (int or 0-d tensor) broadcast over the batch
    torch.testing.assert_close(
        sched.add_noise(x0, eps, 500), sched.add_noise(x0, eps, torch.tensor([500] * 3))
    )
    torch.testing.assert_close(sched.add_noise(x0, eps, torch.tensor(500)), sched.add_noise(x0, eps, 500))
    # dtype follows the sample
    assert sched.add_noise(x0.float(), eps.float(), ts).dtype == torch.float32


@pytest.mark.parametrize(
    ("timesteps", "match"),
    [
        (torch.tensor([0, 1]), "batch of 3"),
        (torch.tensor([[1, 2, 3]]), "scalar or 1-D"),
        (torch.tensor([1.0, 2.0, 3.0]), "integer"),
        (torch.tensor([0, 1, 1000]), r"\[0, 999\]"),
        (torch.tensor([-1, 1, 2]), r"\[0, 999\]"),
    ],
)
def test_add_noise_rejects_bad_timesteps(timesteps: torch.Tensor, match: str) -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=match):
        DDIMScheduler().add_noise(x, x, timesteps)
    with pytest.raises(ValueError, match=match):
        DDIMScheduler().get_velocity(x, x, timesteps)


def test_add_noise_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        DDIMScheduler().add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]))


def test_scale_model_input_is_identity() -> None:
    x = torch.randn(2, 3)
    assert DDIMScheduler().scale_model_input(x, 10) is x


# ----------------------------------------------------------------------------- step


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("t_index", [0, 1, 24, 48])
def test_step_eta0_oracle_closed_form(prediction_type: str, t_index: int) -> None:
    sched = DDIMScheduler(DDIMConfig(prediction_type=prediction_type))
    ts = sched.set_timesteps(50).tolist()
    t, prev = ts[t_index], ts[t_index + 1]
    ac = _alphas_cumprod64(sched.config)
    x0, eps = _randn(2, 4, 8, 8, seed=4), _randn(2, 4, 8, 8, seed=5)
    x_t = sched.add_noise(x0, eps, torch.tensor([t, t]))
    if prediction_type == "epsilon":
        model_output = eps
    elif prediction_type == "v_prediction":
        model_output = sched.get_velocity(x0, eps, torch.tensor([t, t]))
    else:
        model_output = x0
    out = sched.step(model_output, t, x_t, eta=0.0)
    assert isinstance(out, DDIMStepOutput)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-5)
    a_prev = ac[prev]
    torch.testing.assert_close(
        out.prev_sample, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0, atol=1e-5
    )
    # float64 in, coefficients in float64: far tighter than the required 1e-5
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-11)


def test_step_float32_oracle_within_1e_5_where_the_amplification_allows() -> None:
    sched = DDIMScheduler()
    sched.set_timesteps(50)
    x0, eps = _randn(2, 4, 8, 8, seed=6, dtype=torch.float32), _randn(2, 4, 8, 8, seed=7, dtype=torch.float32)
    for t in (19, 199, 499):
        x_t = sched.add_noise(x0, eps, t)
        out = sched.step(eps, t, x_t)
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_final_step_returns_pred_x0_exactly(prediction_type: str) -> None:
    sched = DDIMScheduler(DDIMConfig(prediction_type=prediction_type))
    last = int(sched.set_timesteps(50)[-1])
    assert sched.previous_timestep(last) == -1
    x0, eps = _randn(2, 3, 5, seed=8, dtype=torch.float32), _randn(2, 3, 5, seed=9, dtype=torch.float32)
    x_t = sched.add_noise(x0, eps, last)
    output, _ = _oracle_output(
        prediction_type, x_t.double(), x0.double(), _alphas_cumprod64(sched.config)[last]
    )
    out = sched.step(output.float(), last, x_t, eta=0.0)
    assert torch.equal(out.prev_sample, out.pred_original_sample)
    torch.testing.assert_close(out.prev_sample, x0, rtol=0, atol=1e-5)
    # eta > 0 at the final step: sigma = 0 (a_prev = 1), so still exactly x0 and no noise drawn
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    out1 = sched.step(output.float(), last, x_t, eta=1.0, generator=gen)
    assert torch.equal(out1.prev_sample, out1.pred_original_sample)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("n", [50, 7])
def test_eta1_sigma_matches_eq16(n: int) -> None:
    sched = DDIMScheduler()
    ts = sched.set_timesteps(n).tolist()
    t, prev = ts[2], ts[3]
    ac = _alphas_cumprod64(sched.config)
    a_t, a_prev = ac[t], ac[prev]
    sigma = 1.0 * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)  # eq. 16, eta = 1
    x0, eps, z = _randn(2, 3, 4, seed=10), _randn(2, 3, 4, seed=11), _randn(2, 3, 4, seed=12)
    x_t = sched.add_noise(x0, eps, t)
    out = sched.step(eps, t, x_t, eta=1.0, variance_noise=z)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z  # eq. 12
    torch.testing.assert_close(out.prev_sample, expected, rtol=0, atol=1e-10)
    # the noise enters with weight exactly sigma
    out0 = sched.step(eps, t, x_t, eta=1.0, variance_noise=torch.zeros_like(z))
    torch.testing.assert_close(
        (out.prev_sample - out0.prev_sample) / z, torch.full_like(z, sigma), rtol=1e-9, atol=0
    )
    # eta = 0.5 scales sigma linearly
    out_half = sched.step(eps, t, x_t, eta=0.5, variance_noise=z)
    s = 0.5 * sigma
    torch.testing.assert_close(
        out_half.prev_sample,
        math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s**2) * eps + s * z,
        rtol=0,
        atol=1e-10,
    )


def test_eta1_with_every_timestep_is_the_ddpm_posterior_std() -> None:
    # With prev = t - 1, 1 - a_t / a_prev = beta_t, so sigma^2 = beta_t (1 - a_{t-1}) / (1 - a_t):
    # the DDPM posterior variance (Ho et al. 2020, eq. 7).
    sched = DDIMScheduler()
    sched.set_timesteps(T)
    ac = _alphas_cumprod64(sched.config)
    t = 600
    beta_t = 1 - ac[t] / ac[t - 1]
    sigma = math.sqrt(beta_t * (1 - ac[t - 1]) / (1 - ac[t]))
    x = _randn(4, 4, seed=13)
    eps, z = _randn(4, 4, seed=14), _randn(4, 4, seed=15)
    with_z = sched.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
    without = sched.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(z)).prev_sample
    torch.testing.assert_close(with_z - without, sigma * z, rtol=1e-9, atol=1e-12)


def test_generator_reproducibility() -> None:
    sched = DDIMScheduler()
    sched.set_timesteps(50)
    x, eps = (
        _randn(2, 3, 8, 8, seed=16, dtype=torch.float32),
        _randn(2, 3, 8, 8, seed=17, dtype=torch.float32),
    )

    def run(seed: int) -> torch.Tensor:
        return sched.step(eps, 979, x, eta=1.0, generator=torch.Generator().manual_seed(seed)).prev_sample

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # eta = 0: deterministic and the generator is not advanced
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    a = sched.step(eps, 979, x, eta=0.0, generator=gen).prev_sample
    assert torch.equal(gen.get_state(), state)
    assert torch.equal(a, sched.step(eps, 979, x, eta=0.0).prev_sample)
    # noise follows the sample's dtype
    assert sched.step(eps.double(), 979, x.double(), eta=1.0).prev_sample.dtype == F64


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_full_50_step_eta0_loop_with_oracle_recovers_x0(prediction_type: str) -> None:
    sched = DDIMScheduler(DDIMConfig(prediction_type=prediction_type))
    ac = _alphas_cumprod64(sched.config)
    x0 = _randn(2, 4, 16, 16, seed=18, dtype=torch.float32).clamp(-1, 1)
    x = _randn(2, 4, 16, 16, seed=19, dtype=torch.float32)  # pure noise
    for t in sched.set_timesteps(50):
        model_input = sched.scale_model_input(x, t)
        output, _ = _oracle_output(prediction_type, model_input.double(), x0.double(), ac[int(t)])
        x = sched.step(output.float(), t, x, eta=0.0).prev_sample
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-4)


def test_img2img_loop_from_strength_recovers_x0() -> None:
    sched = DDIMScheduler()
    ac = _alphas_cumprod64(sched.config)
    x0, eps = (
        _randn(1, 3, 8, 8, seed=20, dtype=torch.float32),
        _randn(1, 3, 8, 8, seed=21, dtype=torch.float32),
    )
    ts = sched.set_timesteps(50, strength=0.4)
    x = sched.add_noise(x0, eps, ts[:1])
    for t in ts:
        output, _ = _oracle_output("epsilon", x.double(), x0.double(), ac[int(t)])
        x = sched.step(output.float(), t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-4)


def test_clip_sample_clamps_pred_x0() -> None:
    sched = DDIMScheduler(DDIMConfig(clip_sample=1.0))
    sched.set_timesteps(50)
    x0 = torch.tensor([[-3.0, -0.5, 0.5, 3.0]], dtype=F64)
    eps = _randn(1, 4, seed=22)
    x_t = sched.add_noise(x0, eps, 499)
    out = sched.step(eps, 499, x_t)
    torch.testing.assert_close(out.pred_original_sample, x0.clamp(-1, 1), rtol=0, atol=1e-10)
    a_prev = _alphas_cumprod64(sched.config)[479]
    # eps is not re-derived from the clipped x_0 (diffusers' default)
    torch.testing.assert_close(
        out.prev_sample, math.sqrt(a_prev) * x0.clamp(-1, 1) + math.sqrt(1 - a_prev) * eps, rtol=0, atol=1e-10
    )


def test_step_invalid_arguments() -> None:
    sched = DDIMScheduler()
    sched.set_timesteps(50)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        sched.step(torch.zeros(2, 4), 999, x)
    with pytest.raises(ValueError, match="eta"):
        sched.step(x, 999, x, eta=-0.1)
    with pytest.raises(ValueError, match="eta"):
        sched.step(x, 999, x, eta=1.5)
    with pytest.raises(ValueError, match="eta"):
        sched.step(x, 999, x, eta=float("nan"))
    with pytest.raises(ValueError, match="not in the current schedule"):
        sched.step(x, 998, x)
    with pytest.raises(ValueError, match="not in the current schedule"):
        sched.step(x, 5000, x)
    with pytest.raises(ValueError, match="not both"):
        sched.step(x, 999, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    with pytest.raises(ValueError, match="variance_noise shape"):
        sched.step(x, 999, x, eta=1.0, variance_noise=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="scalar"):
        sched.step(x, torch.tensor([999, 979]), x)
    with pytest.raises(ValueError, match="integer"):
        sched.step(x, torch.tensor(999.5), x)


# ----------------------------------------------------------------------------- property test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prediction_type=st.sampled_from(["epsilon", "v_prediction", "sample"]),
    schedule=st.sampled_from(["linear", "scaled_linear", "cosine"]),
    n=st.integers(1, 100),
    data=st.data(),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_oracle_step_recovers_x0_property(
    prediction_type: str, schedule: str, n: int, data: st.DataObject, shape: list[int], seed: int
) -> None:
    sched = DDIMScheduler(DDIMConfig(beta_schedule=schedule, prediction_type=prediction_type))
    ts = sched.set_timesteps(n).tolist()
    i = data.draw(st.integers(0, n - 1), label="t_index")
    t = ts[i]
    prev = ts[i + 1] if i + 1 < n else -1
    ac = _alphas_cumprod64(sched.config)
    x0, eps = _randn(*shape, seed=seed), _randn(*shape, seed=seed + 1)
    x_t = sched.add_noise(x0, eps, t)
    output, _ = _oracle_output(prediction_type, x_t, x0, ac[t])
    out = sched.step(output, t, x_t)
    # float64; 1/sqrt(a_t) reaches ~2e4 for the cosine schedule at t = T-1, hence the scaled tolerance
    tol = 1e-12 / math.sqrt(ac[t]) + 1e-12
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=tol)
    a_prev = ac[prev] if prev >= 0 else 1.0
    torch.testing.assert_close(
        out.prev_sample, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0, atol=tol
    )
