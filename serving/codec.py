"""The transformer -> predictor wire format: one batch of tiles of one image.

Request (Open Inference Protocol v2, ``POST /v2/models/{name}/infer``)::

    {"id": "...",
     "parameters": {"scale": 4.0, "steps": 0, "seed": 0, "strength": 1.0,          # render settings
                    "lr_height": h, "lr_width": w, "out_height": H, "out_width": W,  # the whole image
                    "canvas_height": Hc, "canvas_width": Wc},
     "inputs": [{"name": "lr", "datatype": "BYTES", "shape": [B], "data": ["<base64 fp32>", ...],
                 "parameters": {"content_type": "fp32_base64"}},
                {"name": "geometry", "datatype": "INT64", "shape": [B, 8],
                 "data": [y0, x0, y1, x1, r0, c0, rows, cols, ...]}],
     "outputs": [{"name": "sr", "parameters": {"binary_data": true}}]}

* ``lr`` is each tile's LR crop (the rows/cols its bicubic taps read, see :mod:`serving.tile_crops`),
  little-endian float32 ``(3, rows, cols)`` (or uint8 with ``lr_dtype``), base64 in a BYTES element.
  The predictor also takes ``lr`` as a standard FP32 tensor ``[B, 3, rows, cols]`` (JSON or the binary
  extension: what a stock Open Inference Protocol client sends), which is slower (this KServe version
  turns every binary or JSON tensor into a Python list on decode; a base64 string stays one string).
  The codec only decodes and checks: the predictor makes each tile's bicubic input from its crop.
* The response carries ``sr`` UINT16 ``[B, 3, th, tw]`` (values in [0, 1] quantised to 1/65535: half
  the bytes of FP32, and 256x finer than the 8-bit images it becomes) through the binary tensor
  extension when asked (raw bytes after the JSON header, ``Inference-Header-Content-Length``), JSON
  numbers otherwise, and ``parameters`` ``model_version``, ``checkpoint_sha256`` (named by a GeoTIFF
  answer's STAC Item), ``model_ms``. Decoders also take FP32.
* Uncertainty: with the parameter ``samples`` K in [2, 16] (absent or 1: one draw, the format above
  unchanged) the predictor renders every tile K times, draw k with the canvas noise of seed
  ``seed + k`` (:func:`hndsr.model_pass.sample_seeds`; draw 0 is the one-sample output), and ``sr`` is
  ``[B, 4, th, tw]``: the mean of the draws as R, G, B, and as a fourth channel their per-pixel
  standard deviation (:func:`hndsr.model_pass.mean_and_spread`: ddof 1, pooled over 3 x 3 pixels,
  averaged over R, G, B), quantised like the pixels (65535 = 1.0).
  ``samples`` > 1 needs steps > 0 (the deterministic path draws the same image every time): a 422.

The v1 form (``POST /v1/models/{name}:predict``) carries the same::

    {"instances": [{"lr_b64": "...", "geometry": [8 ints]}, ...], "parameters": {...}}
    -> {"predictions": [{"sr_b64": "...", "dtype": "uint16", "shape": [3, th, tw]}, ...],
        "model_version": ..., "checkpoint_sha256": ..., "model_ms": ...}

The transformer's side is :mod:`serving.batch_encode`; the predictor's :mod:`serving.batch_decode`, with
its parameters parsed by :mod:`serving.batch_params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
LR_CONTENT_TYPE = "fp32_base64"
# b64: the transformer's (one base64 string per crop); fp32_binary / fp32_json: what a stock Open Inference
# Protocol client sends (e.g. tritonclient), as a standard FP32 tensor.
ENCODINGS = ("b64", "fp32_binary", "fp32_json")
TILE_SCALE = 65535  # output tiles travel as uint16 in units of 1/65535 ...
TILE_BITS: dict[int, np.dtype[Any]] = {
    8: np.dtype("u1"),
    16: np.dtype("<u2"),
}  # ... or uint8 when one tile is the whole 8-bit output
TILE_DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "FP32": np.dtype("<f4"),
}
LR_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


@dataclass(frozen=True)
class RenderParams:
    scale: float
    steps: int | None = None  # None: the model's default
    seed: int = 0
    strength: float | None = None
    samples: int = 1  # K >= 2: K seeded draws, mean + per-pixel std (hndsr.model_pass.mean_and_spread)

    def as_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": float(self.scale), "seed": int(self.seed)}
        if self.steps is not None:
            out["steps"] = int(self.steps)
        if self.strength is not None:
            out["strength"] = float(self.strength)
        if self.samples != 1:  # absent for one sample: that wire format is unchanged
            out["samples"] = int(self.samples)
        return out

    @property
    def channels(self) -> int:
        """Channels of a returned tile: R, G, B, and the uncertainty when K >= 2 draws are made."""
        return 4 if self.samples > 1 else 3


def quantise_tiles(sr: np.ndarray, bits: int = 16) -> np.ndarray:
    """float32 tiles in [0, 1] -> the wire format: uint16 in units of 1/65535 (or uint8, 1/255, for
    ``bits=8``); scales ``sr`` in place."""
    dtype = TILE_BITS[bits]
    np.multiply(sr, np.float32(np.iinfo(dtype).max), out=sr)
    np.rint(sr, out=sr)
    return sr.astype(dtype)


def tile_values(sr: np.ndarray) -> np.ndarray:
    """One tile (or batch) of the wire format as float32 in [0, 1]."""
    if sr.dtype in (np.uint8, np.uint16):
        return sr.astype(np.float32) * np.float32(1.0 / np.iinfo(sr.dtype).max)
    return np.asarray(sr, dtype=np.float32)
