"""The predictor's side of the tile-batch wire format (:mod:`serving.codec`): decode a v1 or v2 request
into a checked :class:`DecodedBatch` (every inconsistency a 400 or 422 before anything is allocated),
encode the v1 answer.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hndsr.errors import ValueRangeError
from hndsr.raster import PIXEL_RANGE_TOLERANCE, check_pixel_range, to_unit_float
from serving.batch_params import lr_dtype, render_params, tile_bits
from serving.codec import RenderParams
from serving.errors import BadRequest, PayloadTooLarge, Unprocessable
from serving.tile_crops import GEOMETRY_FIELDS, Canvas, TileSpec, crop_taps


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


def _checked_canvas(params: dict[str, Any], limits: BatchLimits) -> tuple[Canvas, RenderParams]:
    """The batch's canvas and render settings, the canvas checked against the scale and the limits."""
    try:
        canvas = Canvas.from_params(params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    rp = render_params(params)
    check_canvas(canvas, rp.scale, limits)
    return canvas, rp


def _decode_b64_crops(values: list[Any], specs: list[TileSpec], params: dict[str, Any]) -> list[torch.Tensor]:
    dtype = lr_dtype(params)
    return [_decode_b64_crop(v, s, i, dtype) for i, (v, s) in enumerate(zip(values, specs, strict=True))]


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
    canvas, rp = _checked_canvas(params, limits)
    specs = _specs(_as_numpy(inputs["geometry"], np.int64), canvas, limits)
    lr = inputs["lr"]
    if lr.datatype == "BYTES":
        data = lr.data if lr.data is not None else list(lr.as_numpy().ravel())
        values = [v for row in data for v in (row if isinstance(row, list) else [row])]
        if len(values) != len(specs):
            raise BadRequest(f"'lr' holds {len(values)} tiles, 'geometry' {len(specs)}")
        crops = _decode_b64_crops(values, specs, params)
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
    canvas, rp = _checked_canvas(params, limits)
    instances = payload["instances"]
    try:
        rows = np.asarray([inst["geometry"] for inst in instances], dtype=np.int64)
        values = [inst["lr_b64"] for inst in instances]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"each instance needs 'lr_b64' and 'geometry' (8 integers): {exc}") from exc
    specs = _specs(rows, canvas, limits)
    crops = _decode_b64_crops(values, specs, params)
    _check_crops(crops, specs, canvas)
    request_id = str(payload.get("id") or uuid.uuid4().hex)
    return DecodedBatch(canvas, specs, crops, rp, request_id, False, tile_bits(params))


def encode_v1_response(
    sr: np.ndarray, model_version: str, model_ms: float, steps: int, checkpoint_sha256: str = ""
) -> dict[str, Any]:
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
        "checkpoint_sha256": checkpoint_sha256,  # named by the STAC Item of a GeoTIFF output
        "model_ms": round(model_ms, 3),
        "steps": steps,
    }
