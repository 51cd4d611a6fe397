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
  numbers otherwise, and ``parameters`` ``model_version``, ``model_ms``. Decoders also take FP32.

The v1 form (``POST /v1/models/{name}:predict``) carries the same::

    {"instances": [{"lr_b64": "...", "geometry": [8 ints]}, ...], "parameters": {...}}
    -> {"predictions": [{"sr_b64": "...", "dtype": "uint16", "shape": [3, th, tw]}, ...],
        "model_version": ..., "model_ms": ...}
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch

from hndsr.errors import ValueRangeError
from hndsr.raster import PIXEL_RANGE_TOLERANCE, check_pixel_range, to_unit_float
from hndsr.resample import check_scale
from serving.errors import BadRequest, PayloadTooLarge, PredictorFailed, Unprocessable
from serving.tile_crops import GEOMETRY_FIELDS, Canvas, TileSpec, crop_taps

HEADER_LENGTH = "inference-header-content-length"
LR_CONTENT_TYPE = "fp32_base64"
# The same limits as the transformer's (serving.validation.Limits): a client that sends tile batches
# straight to the predictor gets the same answers.
MAX_STEPS = 50
MAX_SEED = 2**32 - 1
# b64: the transformer's (one base64 string per crop); fp32_binary / fp32_json: what a stock Open Inference
# Protocol client sends (e.g. tritonclient), as a standard FP32 tensor.
ENCODINGS = ("b64", "fp32_binary", "fp32_json")
TILE_SCALE = 65535  # output tiles travel as uint16 in units of 1/65535 ...
TILE_BITS: dict[int, np.dtype[Any]] = {
    8: np.dtype("u1"),
    16: np.dtype("<u2"),
}  # ... or uint8 when one tile is the whole 8-bit output
_TILE_DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "FP32": np.dtype("<f4"),
}


@dataclass(frozen=True)
class RenderParams:
    scale: float
    steps: int | None = None  # None: the model's default
    seed: int = 0
    strength: float | None = None

    def as_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": float(self.scale), "seed": int(self.seed)}
        if self.steps is not None:
            out["steps"] = int(self.steps)
        if self.strength is not None:
            out["strength"] = float(self.strength)
        return out


@dataclass
class TileBatch:
    """What the transformer sends: LR crops of some tiles of one image."""

    canvas: Canvas
    specs: list[TileSpec]
    crops: list[np.ndarray]  # float32 (3, rows, cols), contiguous
    params: RenderParams
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tile_bits: int = 16  # 8 only where the tiles are the final 8-bit pixels (no blending follows)
    lr_dtype: str = "float32"  # "uint8" when the crops are 8-bit values k/255: a quarter of the bytes

    def parameters(self) -> dict[str, Any]:
        extra = {"tile_bits": self.tile_bits, "lr_dtype": self.lr_dtype}
        return self.params.as_params() | self.canvas.as_params() | extra

    def encoded_crops(self) -> list[str]:
        return [_b64(c, self.lr_dtype) for c in self.crops]


@dataclass
class BatchResult:
    sr: np.ndarray  # (B, 3, th, tw): uint16 / uint8 (units of 1/65535, 1/255) or float32 in [0, 1]
    model_version: str = ""
    model_ms: float = 0.0
    steps: int | None = None


def _b64(array: np.ndarray, lr_dtype: str = "float32") -> str:
    if lr_dtype == "uint8":  # k/255 in float32 times 255 rounds back to k exactly
        raw = np.rint(np.multiply(array, np.float32(255))).astype(np.uint8).tobytes()
    else:
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return base64.b64encode(raw).decode("ascii")


# ------------------------------------------------------------------------------------ transformer side


def encode_v2(batch: TileBatch, encoding: str = "b64") -> tuple[bytes, dict[str, str]]:
    """Body and headers of a v2 request for ``batch`` (``encoding``: one of :data:`ENCODINGS`)."""
    geometry = {
        "name": "geometry",
        "datatype": "INT64",
        "shape": [len(batch.specs), len(GEOMETRY_FIELDS)],
        "data": [v for s in batch.specs for v in s.as_row()],
    }
    binary_out = encoding in ("b64", "fp32_binary")
    req: dict[str, Any] = {
        "id": batch.request_id,
        "parameters": batch.parameters(),
        "outputs": [{"name": "sr", "parameters": {"binary_data": binary_out}}],
    }
    headers = {"content-type": "application/json"}
    if encoding == "b64":
        lr = {
            "name": "lr",
            "datatype": "BYTES",
            "shape": [len(batch.crops)],
            "data": batch.encoded_crops(),
            "parameters": {"content_type": LR_CONTENT_TYPE},
        }
        req["inputs"] = [lr, geometry]
        return orjson.dumps(req), headers
    stacked = _pad_stack(batch.crops)
    if encoding == "fp32_json":
        req["inputs"] = [
            {
                "name": "lr",
                "datatype": "FP32",
                "shape": list(stacked.shape),
                "data": stacked.ravel().tolist(),
            },
            geometry,
        ]
        return orjson.dumps(req), headers
    if encoding == "fp32_binary":
        raw = stacked.astype("<f4").tobytes()
        req["inputs"] = [
            {
                "name": "lr",
                "datatype": "FP32",
                "shape": list(stacked.shape),
                "parameters": {"binary_data_size": len(raw)},
            },
            geometry,
        ]
        head = orjson.dumps(req)
        return head + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    raise ValueError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")


def _pad_stack(crops: list[np.ndarray]) -> np.ndarray:
    rows = max(c.shape[1] for c in crops)
    cols = max(c.shape[2] for c in crops)
    out = np.zeros((len(crops), crops[0].shape[0], rows, cols), np.float32)
    for i, c in enumerate(crops):
        out[i, :, : c.shape[1], : c.shape[2]] = c
    return out


def encode_v1(batch: TileBatch) -> tuple[bytes, dict[str, str]]:
    body = {
        "instances": [
            {"lr_b64": v, "geometry": s.as_row()}
            for v, s in zip(batch.encoded_crops(), batch.specs, strict=True)
        ],
        "parameters": batch.parameters(),
    }
    return orjson.dumps(body), {"content-type": "application/json"}


def decode_v2_response(content: bytes, headers: Any) -> BatchResult:
    """Parse the predictor's v2 answer (binary extension or JSON)."""
    try:
        header_len = int(headers.get(HEADER_LENGTH) or len(content))
        doc = orjson.loads(content[:header_len])
        out = next(o for o in doc["outputs"] if o["name"] == "sr")
        shape = [int(v) for v in out["shape"]]
        params = out.get("parameters") or {}
        dtype = _TILE_DTYPES[out.get("datatype", "FP32")]
        if "binary_data_size" in params:
            size = int(params["binary_data_size"])
            sr = np.frombuffer(content, dtype=dtype, count=size // dtype.itemsize, offset=header_len)
            sr = sr.reshape(shape)
        else:
            sr = np.asarray(out["data"], dtype=dtype).reshape(shape)
        meta = doc.get("parameters") or {}
        steps = meta.get("steps")
        return BatchResult(
            sr=sr,
            model_version=str(meta.get("model_version", "")),
            model_ms=float(meta.get("model_ms", 0.0)),
            steps=int(steps) if steps is not None else None,
        )
    except (ValueError, KeyError, TypeError, StopIteration, orjson.JSONDecodeError) as exc:
        raise PredictorFailed(
            f"unreadable v2 response from the predictor ({type(exc).__name__}: {exc})"
        ) from exc


def decode_v1_response(content: bytes) -> BatchResult:
    try:
        doc = orjson.loads(content)
        tiles = []
        for p in doc["predictions"]:
            raw = base64.b64decode(p["sr_b64"], validate=True)
            dtype = _TILE_DTYPES[str(p.get("dtype", "float32")).upper().replace("FLOAT", "FP")]
            tiles.append(np.frombuffer(raw, dtype=dtype).reshape([int(v) for v in p["shape"]]))
        steps = doc.get("steps")
        return BatchResult(
            sr=np.stack(tiles),
            model_version=str(doc.get("model_version", "")),
            model_ms=float(doc.get("model_ms", 0.0)),
            steps=int(steps) if steps is not None else None,
        )
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise PredictorFailed(
            f"unreadable v1 response from the predictor ({type(exc).__name__}: {exc})"
        ) from exc


# ------------------------------------------------------------------------------------ predictor side


@dataclass
class DecodedBatch:
    """A validated batch on the predictor: each tile's LR crop ``(3, rows, cols)``, checked to cover its
    tile (:func:`serving.tile_crops.model_inputs` makes the model's input from them)."""

    canvas: Canvas
    specs: list[TileSpec]
    crops: list[torch.Tensor]
    params: RenderParams
    request_id: str
    binary_output: bool
    tile_bits: int = 16


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
    return RenderParams(scale=scale, steps=steps, seed=seed, strength=strength)


def tile_bits(params: dict[str, Any]) -> int:
    bits = _param(params, "tile_bits", int, 16)
    if bits not in TILE_BITS:
        raise BadRequest(f"tile_bits must be 8 or 16, got {bits}")
    return int(bits)


@dataclass(frozen=True)
class BatchLimits:
    """What one tile batch may ask the predictor to allocate, checked before anything is allocated.

    The canvas bounds the diffusion noise field (``channels x canvas / factor^2`` floats) and the
    resampling taps; the defaults cover the transformer's largest synchronous image (2048 x 2048 px at
    x4: 8192 x 8192) with room to spare."""

    max_batch: int = 16
    max_tile: int = 1024
    min_tile: int = 16  # the smallest tile the transformer plans (8 px at x2)
    factor: int = 4
    max_canvas_pixels: int = 72_000_000
    max_side: int = 32_768


def check_canvas(canvas: Canvas, scale: float, limits: BatchLimits) -> None:
    """The canvas must be the one the scale gives (as the transformer plans it) and within the limits."""
    if max(canvas.lr_h, canvas.lr_w, canvas.canvas_h, canvas.canvas_w) > limits.max_side or (
        canvas.canvas_h * canvas.canvas_w > limits.max_canvas_pixels
    ):
        raise PayloadTooLarge(
            f"the canvas {canvas.canvas_h}x{canvas.canvas_w} (input {canvas.lr_h}x{canvas.lr_w}) is over "
            f"this predictor's limits ({limits.max_canvas_pixels:,} px, {limits.max_side:,} px a side): send "
            "smaller images through the transformer, or large ones through the asynchronous path",
            kind="canvas_too_large",
        )
    want = Canvas.for_scale(canvas.lr_h, canvas.lr_w, scale, limits.factor)
    if want != canvas:
        raise BadRequest(
            f"canvas parameters {canvas.as_params()} disagree with scale {scale:g}: an input of "
            f"{canvas.lr_h}x{canvas.lr_w} px gives {want.as_params()} (serving.tile_crops.Canvas.for_scale)"
        )


def _specs(rows: np.ndarray, canvas: Canvas, limits: BatchLimits) -> list[TileSpec]:
    if rows.ndim != 2 or rows.shape[1] != len(GEOMETRY_FIELDS):
        raise BadRequest(
            f"geometry must have shape [B, {len(GEOMETRY_FIELDS)}] ({', '.join(GEOMETRY_FIELDS)})"
        )
    if not 1 <= rows.shape[0] <= limits.max_batch:
        raise BadRequest(f"a batch holds 1 to {limits.max_batch} tiles, got {rows.shape[0]}")
    specs = [TileSpec.from_row(r) for r in rows]
    first = specs[0].tile
    for s in specs:
        t = s.tile
        if (t.height, t.width) != (first.height, first.width):
            raise BadRequest("all tiles of a batch must have the same size")
        if not (0 <= t.y0 < t.y1 <= canvas.canvas_h and 0 <= t.x0 < t.x1 <= canvas.canvas_w):
            raise BadRequest(f"tile {t} lies outside the {canvas.canvas_h}x{canvas.canvas_w} canvas")
        if t.height > limits.max_tile or t.width > limits.max_tile:
            raise BadRequest(
                f"tile {t.height}x{t.width} is above the predictor's limit of {limits.max_tile} px"
            )
        if min(t.height, t.width) < min(limits.min_tile, canvas.canvas_h, canvas.canvas_w):
            raise BadRequest(
                f"tile {t.height}x{t.width} is below the predictor's minimum of {limits.min_tile} px"
            )
        if any(v % limits.factor for v in (t.y0, t.x0, t.y1, t.x1)):
            raise BadRequest(f"tile {t} is not aligned to the model's factor {limits.factor}")
        if (
            s.r0 < 0
            or s.c0 < 0
            or s.rows < 1
            or s.cols < 1
            or s.r0 + s.rows > canvas.lr_h
            or s.c0 + s.cols > canvas.lr_w
        ):
            raise BadRequest(f"LR crop of tile {t} lies outside the {canvas.lr_h}x{canvas.lr_w} input")
    return specs


def check_values(values: torch.Tensor, name: str, tolerance: float = PIXEL_RANGE_TOLERANCE) -> None:
    """LR values must be finite and in [0, 1] (the transformer's rule for images, :func:`hndsr.raster.
    check_pixel_range`): anything else is the client's mistake (422), never a model failure."""
    try:
        check_pixel_range(values.numpy(), name, tolerance)
    except ValueRangeError as exc:
        raise Unprocessable(str(exc), kind="invalid_values") from exc


def _check_crops(crops: list[torch.Tensor], specs: list[TileSpec], canvas: Canvas) -> None:
    for i, c in enumerate(crops):
        check_values(c, f"lr[{i}]")
    try:
        for c, spec in zip(crops, specs, strict=True):
            crop_taps(c, spec, canvas)  # the crop covers what the tile's bicubic taps read
    except ValueError as exc:
        raise BadRequest(f"inconsistent tile batch: {exc}") from exc


LR_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


def lr_dtype(params: dict[str, Any]) -> np.dtype[Any]:
    name = params.get("lr_dtype", "float32")
    if not isinstance(name, str) or name not in LR_DTYPES:
        raise BadRequest(f"lr_dtype must be one of {', '.join(LR_DTYPES)}, got {name!r}")
    return LR_DTYPES[name]


def _decode_b64_crop(value: Any, spec: TileSpec, index: int, dtype: np.dtype[Any]) -> torch.Tensor:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise BadRequest(f"lr[{index}] must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"lr[{index}] is not valid base64: {exc}") from exc
    expected = 3 * spec.rows * spec.cols * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"lr[{index}] holds {len(raw)} bytes; geometry {spec.rows}x{spec.cols} of {dtype.name} needs "
            f"{expected}"
        )
    crop = np.frombuffer(raw, dtype=dtype).reshape(3, spec.rows, spec.cols)
    # 8-bit values through the image reader's own conversion: the floats the transformer holds.
    values = to_unit_float(crop, f"lr[{index}]") if dtype == np.uint8 else crop.copy()
    return torch.from_numpy(values)


def decode_v2_request(request: Any, limits: BatchLimits) -> DecodedBatch:
    """A KServe ``InferRequest`` -> :class:`DecodedBatch`; every inconsistency is a :class:`BadRequest`."""
    params = dict(request.parameters or {})
    inputs = {i.name: i for i in request.inputs}
    if "up" in inputs and "lr" not in inputs:
        raise BadRequest(
            "bicubic 'up' tiles are not accepted: send each tile's LR crop as input 'lr' "
            "(see serving/codec.py)"
        )
    if "geometry" not in inputs or "lr" not in inputs:
        raise BadRequest("a tile batch needs inputs 'geometry' and 'lr'; see serving/codec.py")
    try:
        canvas = Canvas.from_params(params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    rp = render_params(params)
    check_canvas(canvas, rp.scale, limits)
    specs = _specs(_as_numpy(inputs["geometry"], np.int64), canvas, limits)
    lr = inputs["lr"]
    if lr.datatype == "BYTES":
        data = lr.data if lr.data is not None else list(lr.as_numpy().ravel())
        values = [v for row in data for v in (row if isinstance(row, list) else [row])]
        if len(values) != len(specs):
            raise BadRequest(f"'lr' holds {len(values)} tiles, 'geometry' {len(specs)}")
        dtype = lr_dtype(params)
        crops = [_decode_b64_crop(v, s, i, dtype) for i, (v, s) in enumerate(zip(values, specs, strict=True))]
    else:
        arr = _as_numpy(lr, np.float32)
        if arr.ndim != 4 or arr.shape[0] != len(specs) or arr.shape[1] != 3:
            raise BadRequest(
                f"'lr' must have shape [B, 3, rows, cols] with B = {len(specs)}, got {list(arr.shape)}"
            )
        crops = [torch.from_numpy(np.ascontiguousarray(a)) for a in arr]
    _check_crops(crops, specs, canvas)
    binary = bool(params.get("binary_data_output", False))
    for out in request.request_outputs or []:
        if out.name != "sr":
            raise BadRequest(f"unknown output {out.name!r} requested: this model has one output, 'sr'")
        p = out.parameters or {}
        if "binary_data" in p:
            binary = bool(p["binary_data"])
    request_id = str(request.id or uuid.uuid4().hex)
    return DecodedBatch(canvas, specs, crops, rp, request_id, binary, tile_bits(params))


def _as_numpy(inp: Any, dtype: type) -> np.ndarray:
    try:
        return np.asarray(inp.as_numpy(), dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {inp.name!r}: {exc} (shape {inp.shape}, datatype {inp.datatype})") from exc
    except Exception as exc:  # KServe's InvalidInput for unknown datatypes
        if type(exc).__name__ == "InvalidInput":
            raise BadRequest(f"input {inp.name!r}: {exc}") from exc
        raise


def decode_v1_request(payload: Any, limits: BatchLimits) -> DecodedBatch:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("instances"), list)
        or not payload["instances"]
    ):
        raise BadRequest(
            'a v1 tile batch is {"instances": [{"lr_b64": ..., "geometry": [8 ints]}], "parameters": {...}}'
        )
    params = payload.get("parameters")
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object with the canvas and render settings")
    try:
        canvas = Canvas.from_params(params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    rp = render_params(params)
    check_canvas(canvas, rp.scale, limits)
    instances = payload["instances"]
    try:
        rows = np.asarray([inst["geometry"] for inst in instances], dtype=np.int64)
        values = [inst["lr_b64"] for inst in instances]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"each instance needs 'lr_b64' and 'geometry' (8 integers): {exc}") from exc
    specs = _specs(rows, canvas, limits)
    dtype = lr_dtype(params)
    crops = [_decode_b64_crop(v, s, i, dtype) for i, (v, s) in enumerate(zip(values, specs, strict=True))]
    _check_crops(crops, specs, canvas)
    request_id = str(payload.get("id") or uuid.uuid4().hex)
    return DecodedBatch(canvas, specs, crops, rp, request_id, False, tile_bits(params))


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


def encode_v1_response(sr: np.ndarray, model_version: str, model_ms: float, steps: int) -> dict[str, Any]:
    return {
        "predictions": [
            {
                "sr_b64": base64.b64encode(t.astype(t.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
                "dtype": t.dtype.name,
                "shape": list(t.shape),
            }
            for t in sr
        ],
        "model_version": model_version,
        "model_ms": round(model_ms, 3),
        "steps": steps,
    }
