"""The transformer's side of the tile-batch wire format (:mod:`serving.codec`): encode a batch as a v1
or v2 request to the predictor, decode the predictor's answer.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.codec import ENCODINGS, HEADER_LENGTH, LR_CONTENT_TYPE, TILE_DTYPES, RenderParams
from serving.errors import PredictorFailed
from serving.tile_crops import GEOMETRY_FIELDS, Canvas, TileSpec


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
    checkpoint_sha256: str = ""  # "" from a predictor older than the field


def _b64(array: np.ndarray, lr_dtype: str = "float32") -> str:
    if lr_dtype == "uint8":  # k/255 in float32 times 255 rounds back to k exactly
        raw = np.rint(np.multiply(array, np.float32(255))).astype(np.uint8).tobytes()
    else:
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return base64.b64encode(raw).decode("ascii")


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
        dtype = TILE_DTYPES[out.get("datatype", "FP32")]
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
            checkpoint_sha256=str(meta.get("checkpoint_sha256", "")),
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
            dtype = TILE_DTYPES[str(p.get("dtype", "float32")).upper().replace("FLOAT", "FP")]
            tiles.append(np.frombuffer(raw, dtype=dtype).reshape([int(v) for v in p["shape"]]))
        steps = doc.get("steps")
        return BatchResult(
            sr=np.stack(tiles),
            model_version=str(doc.get("model_version", "")),
            model_ms=float(doc.get("model_ms", 0.0)),
            steps=int(steps) if steps is not None else None,
            checkpoint_sha256=str(doc.get("checkpoint_sha256", "")),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise PredictorFailed(
            f"unreadable v1 response from the predictor ({type(exc).__name__}: {exc})"
        ) from exc
