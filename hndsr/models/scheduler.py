"""DDIM noise scheduler (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502).

The scheduler is pure bookkeeping in the style of ``diffusers``: it holds no parameters (it is *not* an
``nn.Module``), knows nothing about the denoising network and does not run the sampling loop. A caller does::

    scheduler = DDIMScheduler(DDIMConfig())
    scheduler.set_timesteps(50)
    x = torch.randn(shape, generator=g)
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(x, t), t, cond)
        x = scheduler.step(eps, int(t), x, eta=0.0).prev_sample

Notation follows the DDIM paper: ``a_t`` is the paper's alpha_t, i.e. the *cumulative* product
prod_{s<=t} (1 - beta_s) that ``diffusers`` calls ``alphas_cumprod``. The forward process is
``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (DDIM eq. 4).

Timestep spacing: "trailing" (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", table 2). For ``n`` inference steps over ``T`` training steps the schedule is
``round(T - i * T / n) - 1`` for ``i = 0 .. n-1``: it always starts at ``T - 1`` (so sampling starts from the
noisiest trained timestep, where pure Gaussian noise is the right input) and ends at ``round(T / n) - 1``.
The rounding is done in exact integer arithmetic, round-half-to-even, so it equals ``diffusers``'
``np.round(np.arange(T, 0, -T / n)) - 1`` without its floating-point edge cases.

The step after a timestep is *looked up* in the schedule (``previous_timestep``), never computed as
``t - T // n``: that shortcut is wrong whenever ``n`` does not divide ``T``.

All schedule arithmetic (betas, ``a_t``, the step coefficients) is done in float64 and only the resulting
coefficients are cast to the sample's dtype, so float32 and float16 samples lose no extra precision here.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch

__all__ = ["DDIMConfig", "DDIMScheduler", "DDIMStepOutput"]

_BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17): offset s and the cap on beta_t.
_COSINE_S = 0.008
_COSINE_MAX_BETA = 0.999


@dataclass(frozen=True)
class DDIMConfig:
    """Static configuration of a :class:`DDIMScheduler`; validated on construction.

    Attributes:
        num_train_timesteps: T, the number of diffusion steps the model was trained with.
        beta_start: beta_0 of the "linear" / "scaled_linear" schedules (ignored by "cosine").
        beta_end: beta_{T-1} of the "linear" / "scaled_linear" schedules (ignored by "cosine").
        beta_schedule: "linear" (Ho et al. 2020), "scaled_linear" (Stable Diffusion: linear in sqrt(beta))
            or "cosine" (Nichol & Dhariwal 2021, ``diffusers``' "squaredcos_cap_v2").
        prediction_type: what the network predicts: "epsilon" (the noise), "v_prediction"
            (v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, Salimans & Ho 2022) or "sample" (x_0 itself).
        clip_sample: if set, the predicted x_0 is clamped to [-clip_sample, clip_sample] before the update.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    clip_sample: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int):
            raise ValueError(
                f"num_train_timesteps must be an int, got {type(self.num_train_timesteps).__name__}"
            )
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {_BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {_PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.beta_schedule != "cosine":
            if not (0.0 < self.beta_start < 1.0 and 0.0 < self.beta_end < 1.0):
                raise ValueError(
                    f"beta_start and beta_end must lie in (0, 1), got {self.beta_start} and {self.beta_end}"
                )
            if self.beta_start > self.beta_end:
                raise ValueError(f"beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})")
        if self.clip_sample is not None and not (self.clip_sample > 0.0 and math.isfinite(self.clip_sample)):
            raise ValueError(f"clip_sample must be None or a finite value > 0, got {self.clip_sample}")


@dataclass
class DDIMStepOutput:
    """Result of one :meth:`DDIMScheduler.step`.

    Attributes:
        prev_sample: x at the previous (less noisy) timestep of the schedule.
        pred_original_sample: the model's estimate of x_0 at this step (after ``clip_sample``).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _betas_float64(config: DDIMConfig) -> torch.Tensor:
    """beta_0 .. beta_{T-1} in float64 for the configured schedule."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float64)
    if config.beta_schedule == "scaled_linear":
        return (
            torch.linspace(math.sqrt(config.beta_start), math.sqrt(config.beta_end), n, dtype=torch.float64)
            ** 2
        )
    # "cosine": alpha_bar(u) = cos^2(((u + s) / (1 + s)) * pi / 2), beta_i = 1 - alpha_bar((i+1)/T) /
    # alpha_bar(i/T), capped at 0.999 to avoid the singularity at u = 1 (Nichol & Dhariwal 2021, eq. 17).
    u = torch.arange(n + 1, dtype=torch.float64) / n
    alpha_bar = torch.cos((u + _COSINE_S) / (1.0 + _COSINE_S) * (math.pi / 2.0)) ** 2
    return torch.clamp(1.0 - alpha_bar[1:] / alpha_bar[:-1], max=_COSINE_MAX_BETA)


def _trailing_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """round(T - i*T/n) - 1 for i = 0..n-1, rounded half-to-even in exact integer arithmetic.

    Consecutive exact values differ by T/n >= 1 and rounding is monotone with round(x + 1) >= round(x) + 1,
    so the result is strictly descending, starts at T - 1 and ends at round(T/n) - 1 >= 0.
    """
    big_t, n = num_train_timesteps, num_inference_steps
    out: list[int] = []
    for i in range(n):
        q, r = divmod(big_t * (n - i), n)  # T(n-i)/n = q + r/n
        if 2 * r > n or (2 * r == n and q % 2 == 1):
            q += 1
        out.append(q - 1)
    return out


class DDIMScheduler:
    """Deterministic (eta = 0) to fully stochastic (eta = 1, DDPM-like) DDIM sampler bookkeeping.

    Attributes:
        config: the (frozen) configuration.
        betas: beta_t, float32, shape (T,).
        alphas: 1 - beta_t, float32, shape (T,).
        alphas_cumprod: a_t = prod_{s<=t} (1 - beta_s), computed in float64 and stored float32, shape (T,).
        final_alpha_cumprod: a used for the step after the last timestep (1.0: the final step lands on x_0).
        init_noise_sigma: standard deviation of the initial noise (1.0 for DDIM, API parity with diffusers).
        num_inference_steps: n of the last :meth:`set_timesteps` call (T before any call).
        timesteps: the schedule, int64, strictly descending. Until :meth:`set_timesteps` is called it is the
            full training schedule T-1, ..., 0.
    """

    def __init__(self, config: DDIMConfig | None = None) -> None:
        self.config: DDIMConfig = config if config is not None else DDIMConfig()
        betas64 = _betas_float64(self.config)
        alphas_cumprod64 = torch.cumprod(1.0 - betas64, dim=0)
        self._alphas_cumprod64: torch.Tensor = alphas_cumprod64
        self._sqrt_alphas_cumprod64: torch.Tensor = alphas_cumprod64.sqrt()
        self._sqrt_one_minus_alphas_cumprod64: torch.Tensor = (1.0 - alphas_cumprod64).sqrt()
        self._alphas_cumprod_list: list[float] = alphas_cumprod64.tolist()
        self.betas: torch.Tensor = betas64.to(torch.float32)
        self.alphas: torch.Tensor = (1.0 - betas64).to(torch.float32)
        self.alphas_cumprod: torch.Tensor = alphas_cumprod64.to(torch.float32)
        self.final_alpha_cumprod: float = 1.0  # "set_alpha_to_one"
        self.init_noise_sigma: float = 1.0
        self.num_inference_steps: int = self.config.num_train_timesteps
        self.timesteps: torch.Tensor = torch.empty(0, dtype=torch.int64)
        self._prev_of: dict[int, int] = {}
        self._install_timesteps(list(range(self.config.num_train_timesteps - 1, -1, -1)))

    # ------------------------------------------------------------------ schedule

    def _install_timesteps(self, timesteps: list[int]) -> None:
        self.timesteps = torch.tensor(timesteps, dtype=torch.int64)
        self._prev_of = {
            t: (timesteps[i + 1] if i + 1 < len(timesteps) else -1) for i, t in enumerate(timesteps)
        }

    def set_timesteps(self, num_inference_steps: int, *, strength: float = 1.0) -> torch.Tensor:
        """Set the sampling schedule ("trailing" spacing, see the module docstring) and return it.

        Args:
            num_inference_steps: n, in [1, T].
            strength: in (0, 1]. Keeps only the last ceil(n * strength) timesteps of the n-step schedule, so
                img2img / SDEdit starts from a partially noised input (strength 1.0: the full schedule).

        Returns:
            ``self.timesteps``: int64, strictly descending, unique, all in [0, T - 1].

        Raises:
            ValueError: n is not an int in [1, T], or strength is not in (0, 1].
        """
        big_t = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
            raise ValueError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if not 1 <= num_inference_steps <= big_t:
            raise ValueError(
                f"num_inference_steps must be in [1, num_train_timesteps={big_t}], got {num_inference_steps}"
            )
        strength = float(strength)
        if not 0.0 < strength <= 1.0:  # also rejects NaN
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        full = _trailing_timesteps(big_t, num_inference_steps)
        # round() first so float noise (e.g. 10 * 0.3 = 3.0000000000000004) does not add a step.
        keep = max(1, math.ceil(round(num_inference_steps * strength, 9)))
        self.num_inference_steps = num_inference_steps
        self._install_timesteps(full[len(full) - keep :])
        return self.timesteps

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The entry after ``timestep`` in ``self.timesteps``, or -1 if ``timestep`` is the last one.

        Raises:
            ValueError: ``timestep`` is not in the current schedule.
        """
        t = self._as_int_timestep(timestep)
        try:
            return self._prev_of[t]
        except KeyError:
            raise ValueError(
                f"timestep {t} is not in the current schedule of {len(self.timesteps)} steps "
                f"({self._describe_timesteps()}); step only with entries of scheduler.timesteps "
                "after set_timesteps()"
            ) from None

    def _describe_timesteps(self) -> str:
        ts = self.timesteps.tolist()
        return ", ".join(map(str, ts)) if len(ts) <= 8 else f"{ts[0]}, {ts[1]}, ..., {ts[-2]}, {ts[-1]}"

    @staticmethod
    def _as_int_timestep(timestep: int | torch.Tensor) -> int:
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a scalar, got a tensor of shape {tuple(timestep.shape)}")
            value = timestep.item()
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"timestep must be an integer, got {value}")
            return int(value)
        if isinstance(timestep, bool):
            raise ValueError("timestep must be an int, got bool")
        try:
            return operator.index(timestep)
        except TypeError:
            raise ValueError(f"timestep must be an int, got {type(timestep).__name__}") from None

    # ------------------------------------------------------------------ sampling

    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Identity: DDIM needs no input scaling (API parity with schedulers that do)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> DDIMStepOutput:
        """One DDIM update x_t -> x_prev, where prev = ``previous_timestep(timestep)`` (DDIM eq. 12).

        Args:
            model_output: the network output at (``sample``, ``timestep``), per ``config.prediction_type``.
            timestep: t, an entry of ``self.timesteps``.
            sample: x_t.
            eta: in [0, 1]; 0 is deterministic DDIM, 1 gives the DDPM posterior variance (eq. 16).
            generator: source of the noise z when eta > 0 and ``variance_noise`` is not given.
            variance_noise: z itself (same shape as ``sample``), instead of drawing it.

        Raises:
            ValueError: shapes differ, eta is outside [0, 1], t is not in the schedule, or both
                ``generator`` and ``variance_noise`` are given.
        """
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}"
            )
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:  # also rejects NaN
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise.shape != sample.shape:
                raise ValueError(
                    f"variance_noise shape {tuple(variance_noise.shape)} "
                    f"!= sample shape {tuple(sample.shape)}"
                )

        t = self._as_int_timestep(timestep)
        prev_t = self.previous_timestep(t)  # looked up in the schedule, not t - T // n

        # Python floats are float64: all coefficients are computed in double precision.
        a_t = self._alphas_cumprod_list[t]
        a_prev = self._alphas_cumprod_list[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        sqrt_a_t = math.sqrt(a_t)
        sqrt_one_minus_a_t = math.sqrt(1.0 - a_t)

        # Predicted x_0 ("predicted x_0" term of eq. 12) and the noise estimate eps_theta(x_t).
        pred_type = self.config.prediction_type
        if pred_type == "epsilon":
            pred_epsilon = model_output
            pred_original_sample = (sample - sqrt_one_minus_a_t * model_output) / sqrt_a_t
        elif pred_type == "v_prediction":
            # v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 and x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps  =>
            pred_original_sample = sqrt_a_t * sample - sqrt_one_minus_a_t * model_output
            pred_epsilon = sqrt_a_t * model_output + sqrt_one_minus_a_t * sample
        else:  # "sample"
            pred_original_sample = model_output
            pred_epsilon = (sample - sqrt_a_t * model_output) / sqrt_one_minus_a_t

        if self.config.clip_sample is not None:
            # As in diffusers (use_clipped_model_output=False): eps is not re-derived from the clipped x_0.
            c = self.config.clip_sample
            pred_original_sample = pred_original_sample.clamp(-c, c)

        # eq. 16: sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_prev))
        # eq. 12: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
        # For eta in [0, 1], 1 - a_prev - sigma^2 >= 0 exactly; max() only absorbs rounding.
        dir_coeff = math.sqrt(max(0.0, 1.0 - a_prev - sigma * sigma))
        prev_sample = math.sqrt(a_prev) * pred_original_sample + dir_coeff * pred_epsilon

        if sigma > 0.0:  # eta = 0 (and the final step, where a_prev = 1) draws no noise
            if variance_noise is None:
                noise_device = generator.device if generator is not None else sample.device
                variance_noise = torch.randn(
                    sample.shape, generator=generator, device=noise_device, dtype=sample.dtype
                )
            noise = variance_noise.to(device=sample.device, dtype=sample.dtype)
            prev_sample = prev_sample + sigma * noise

        return DDIMStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    # ------------------------------------------------------------------ training-side helpers

    def _coefficients(
        self, timesteps: torch.Tensor | int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(a_t) and sqrt(1 - a_t) gathered for ``timesteps`` and shaped to broadcast against ``like``.

        ``timesteps`` is a scalar or a 1-D tensor of length 1 or ``like.shape[0]`` (one t per batch item).
        """
        ts = torch.as_tensor(timesteps)
        if ts.dtype.is_floating_point or ts.dtype.is_complex or ts.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got dtype {ts.dtype}")
        if ts.ndim > 1:
            raise ValueError(f"timesteps must be a scalar or 1-D, got shape {tuple(ts.shape)}")
        if ts.ndim == 1:
            if like.ndim == 0 and ts.shape[0] != 1:
                raise ValueError(f"{ts.shape[0]} timesteps for a 0-d sample")
            if like.ndim > 0 and ts.shape[0] not in (1, like.shape[0]):
                raise ValueError(
                    f"got {ts.shape[0]} timesteps for a batch of {like.shape[0]}: "
                    "pass one per item or a scalar"
                )
        ts_cpu = ts.detach().to("cpu", torch.int64)
        big_t = self.config.num_train_timesteps
        if ts_cpu.numel() and (int(ts_cpu.min()) < 0 or int(ts_cpu.max()) >= big_t):
            raise ValueError(
                f"timesteps must be in [0, {big_t - 1}], got min {int(ts_cpu.min())} max {int(ts_cpu.max())}"
            )
        # Gather in float64 on the CPU, then cast once to the sample's dtype/device.
        sqrt_a = self._sqrt_alphas_cumprod64[ts_cpu]
        sqrt_1ma = self._sqrt_one_minus_alphas_cumprod64[ts_cpu]
        if ts_cpu.ndim == 1 and like.ndim > 0:
            shape = (ts_cpu.shape[0],) + (1,) * (like.ndim - 1)
            sqrt_a, sqrt_1ma = sqrt_a.reshape(shape), sqrt_1ma.reshape(shape)
        elif ts_cpu.ndim == 1:
            sqrt_a, sqrt_1ma = sqrt_a.reshape(()), sqrt_1ma.reshape(())
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        return sqrt_a.to(like.device, dtype), sqrt_1ma.to(like.device, dtype)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) noise (DDIM eq. 4).

        ``timesteps`` is a scalar or one timestep per batch item (``original.shape[0]``).
        """
        if original.shape != noise.shape:
            raise ValueError(f"original shape {tuple(original.shape)} != noise shape {tuple(noise.shape)}")
        sqrt_a, sqrt_1ma = self._coefficients(timesteps, original)
        return sqrt_a * original + sqrt_1ma * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """v-prediction target v = sqrt(a_t) noise - sqrt(1 - a_t) ``sample`` (Salimans & Ho 2022)."""
        if sample.shape != noise.shape:
            raise ValueError(f"sample shape {tuple(sample.shape)} != noise shape {tuple(noise.shape)}")
        sqrt_a, sqrt_1ma = self._coefficients(timesteps, sample)
        return sqrt_a * noise - sqrt_1ma * sample
