"""The request parameters of a tile batch (:mod:`serving.codec`), parsed and range-checked on the
predictor: a wrong type is a 400, a value out of range a 422.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hndsr.errors import InputError
from hndsr.model_pass import check_samples
from hndsr.resample import check_scale
from serving.codec import LR_DTYPES, TILE_BITS, RenderParams
from serving.errors import BadRequest, Unprocessable

# The same limits as the transformer's (serving.validation.Limits): a client that sends tile batches
# straight to the predictor gets the same answers.
MAX_STEPS = 50
MAX_SEED = 2**32 - 1


def _param(params: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = params.get(key, default)
    if value is None:
        if default is None and key in ("scale",):
            raise BadRequest(f"parameter {key!r} is required")
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"parameter {key!r} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadRequest(f"parameter {key!r} must be a number, got {value!r}")
    try:
        return kind(value)
    except OverflowError as exc:
        raise BadRequest(f"parameter {key!r} is out of range: {value!r}") from exc


def render_params(params: dict[str, Any]) -> RenderParams:
    scale = check_scale(_param(params, "scale", float))
    steps = _param(params, "steps", int, None)
    seed = _param(params, "seed", int, 0)
    strength = _param(params, "strength", float, None)
    if steps is not None and not 0 <= steps <= MAX_STEPS:
        raise Unprocessable(
            f"steps {steps} is outside [0, {MAX_STEPS}] (0 = deterministic path)", kind="invalid_steps"
        )
    if not 0 <= seed <= MAX_SEED:
        raise Unprocessable(f"seed {seed} is outside [0, {MAX_SEED}]", kind="invalid_seed")
    if strength is not None and not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise Unprocessable(f"strength {strength} is outside (0, 1]", kind="invalid_strength")
    samples = _param(params, "samples", int, 1)
    check_render_samples(samples, steps)
    return RenderParams(scale=scale, steps=steps, seed=seed, strength=strength, samples=samples)


def check_render_samples(samples: int, steps: int | None, where: str = "") -> None:
    """The sample count against the steps (None: the model's default, checked once it is known): a
    422 saying what to send instead, prefixed with ``where`` in the request."""
    try:
        check_samples(samples, 1 if steps is None else steps)
    except InputError as exc:
        raise Unprocessable(f"{where}: {exc}" if where else str(exc), kind="invalid_samples") from exc


def tile_bits(params: dict[str, Any]) -> int:
    bits = _param(params, "tile_bits", int, 16)
    if bits not in TILE_BITS:
        raise BadRequest(f"tile_bits must be 8 or 16, got {bits}")
    return int(bits)


def lr_dtype(params: dict[str, Any]) -> np.dtype[Any]:
    name = params.get("lr_dtype", "float32")
    if not isinstance(name, str) or name not in LR_DTYPES:
        raise BadRequest(f"lr_dtype must be one of {', '.join(LR_DTYPES)}, got {name!r}")
    return LR_DTYPES[name]
