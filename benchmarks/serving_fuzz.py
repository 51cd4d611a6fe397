"""Serving fuzz: malformed requests against real ``hndsr serve predictor`` + ``transformer`` processes.

At least ``--per-server`` requests go to each server (default 1000), generated deterministically from
``--seed``, in these categories:

- ``v1``: v1 bodies — wrong structure and types, unknown keys, too many instances, parameter
  extremes (scale, steps, seed, strength, output_format), bad base64, images that are not images;
- ``v2``: v2 bodies — JSON and the binary tensor extension (BYTES elements, sizes that do not add up),
  wrong datatypes and shapes, unknown outputs, and the predictor's tile batches (geometry, canvas,
  LR crops of the wrong size, ``lr_dtype``, ``tile_bits``, encodings);
- ``headers``: ``Content-Type`` spellings, ``Inference-Header-Content-Length`` junk (``abc``, ``1e3``,
  negative, past the body), odd ``X-Api-Key``/``X-Request-ID`` values;
- ``values``: float images holding 0-255 or NaN/Inf, LR crops outside [0, 1] or non-finite (the take-down
  case of a client opening the breakers, replayed several times in a row);
- ``sizes``: bodies over the limit, header-only images claiming huge sizes, 16384 x 16384 canvases with
  distinct seeds (the memory take-down case) and noise fields at the canvas limit;
- ``management``: model-repository endpoints without or with a wrong token, other methods, ``OPTIONS``,
  ``:explain``, model versions, unknown routes and models, the OpenAPI document;

plus valid requests mixed in (a sixth), so that the deep checks are reached. The request is sent on a
keep-alive connection; a transport error (a reset connection) counts as a failure like a 5xx.

Asserted (exit status 1 otherwise): no 5xx, no transport error, both circuit breakers closed at the
end, both servers ready, and a valid request still answered 200. Reported: statuses per server and
category, error kinds, peak resident memory (VmHWM) of each server process, wall time.

Usage:
  python benchmarks/serving_fuzz.py [--per-server 1000] [--seed 0] [--checkpoint release]
      [--json benchmarks/results/serving_fuzz.json]

The functions are reused by tests/serving/test_protocol.py on a smaller count.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _results import Measurement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hndsr.resample import window_taps  # noqa: E402
from hndsr.tiling import Tile  # noqa: E402
from serving.batch_encode import TileBatch, encode_v1, encode_v2  # noqa: E402
from serving.codec import RenderParams  # noqa: E402
from serving.metrics import sample_value  # noqa: E402
from serving.tile_crops import Canvas, TileSpec, crop, plan  # noqa: E402

V1 = "/v1/models/hndsr:predict"
V2 = "/v2/models/hndsr/infer"
ADMIN_TOKEN = "fuzz-admin-token-" + "0" * 16


@dataclass
class Req:
    category: str
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # sent in chunks without Content-Length


# ------------------------------------------------------------------------------------ material


def _png(h: int, w: int, seed: int = 0, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3) % 256, (xx * 2 + yy * 11) % 256, (xx * yy) % 256], axis=-1).astype(
        np.float32
    )
    img = np.clip(base * 0.6 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(h: int, w: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tiff(values: np.ndarray) -> bytes:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    c, h, w = values.shape
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    with MemoryFile() as mf:
        with mf.open(driver="GTiff", width=w, height=h, count=c, dtype=values.dtype.name) as dst:
            dst.write(values)
        return bytes(mf.read())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Material:
    """Images and tile batches the cases are made of (built once)."""

    def __init__(self) -> None:
        self.png = _png(16, 16, 1)
        self.png_b64 = b64(self.png)
        rng = np.random.default_rng(3)
        unit = rng.random((3, 16, 16), dtype=np.float32)
        self.tiffs = {
            "float_0_255": _tiff(unit * 255.0),  # the take-down case: 8-bit values stored as float
            "float_nan": _tiff(np.where(unit > 0.9, np.nan, unit).astype(np.float32)),
            "float_inf": _tiff(np.where(unit > 0.9, np.inf, unit).astype(np.float32)),
            "float_negative": _tiff(unit - 0.5),
            "float_ok": _tiff(unit),
            "uint16": _tiff((unit * 65535).astype(np.uint16)),
        }
        head = self.png
        self.header_only = {
            f"{w}x{h}": b64(head[:16] + w.to_bytes(4, "big") + h.to_bytes(4, "big") + head[24:33])
            for w, h in ((60_000, 60_000), (1100, 1100), (2049, 2049), (0, 5), (3000, 10))
        }
        self.bad_images = [
            b64(b"hello, not an image"),
            b64(head[: len(head) // 2]),
            b64(_png(16, 16, mode="L")),
            b64(_png(4, 30)),
            b64(_jpeg(16, 16)),
            "",
            "***not base64***",
            self.png_b64[:-3],
            "data:image/png;base64," + self.png_b64,
            self.png_b64 + "\n",
        ]
        # A tile batch for the predictor: an image of 40 x 48 px at x4, two tiles of 128 output px.
        self.lr = rng.random((3, 40, 48), dtype=np.float32)
        self.canvas = Canvas.for_scale(40, 48, 4.0, 4)
        self.specs = plan(self.canvas, tile=128, overlap=32, halo=32, align=4)[:2]

    def batch(self, rng: random.Random, **params: Any) -> TileBatch:
        p = RenderParams(
            scale=4.0, steps=params.get("steps", rng.choice([0, 0, 1])), seed=rng.randrange(2**32)
        )
        crops = [crop(_t(self.lr), s).numpy() for s in self.specs]
        return TileBatch(self.canvas, list(self.specs), crops, p, request_id=f"fuzz-{rng.randrange(10**9)}")


def _t(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a)


# ------------------------------------------------------------------------------------ generators

JUNK_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**40,
    2**70,
    -(2**63),
    1e308,
    -0.0,
    2.5,
    "",
    "4",
    "NaN",
    "\u202e\u0000x",
    [],
    [1, 2],
    {},
    {"a": {"b": 1}},
]


def _junk(rng: random.Random) -> Any:
    return rng.choice(JUNK_VALUES)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _binary_v2(head: dict[str, Any], tensors: list[bytes]) -> tuple[bytes, dict[str, str]]:
    h = json.dumps(head).encode()
    return h + b"".join(tensors), {"Inference-Header-Content-Length": str(len(h))}


def _bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def transformer_cases(m: Material, rng: random.Random) -> list[Callable[[], Req]]:
    """Case factories for the transformer (each call draws a new variant)."""

    def valid_v1() -> Req:
        inst = {"image_b64": m.png_b64, "scale": rng.choice([2, 3, 4, 2.5]), "steps": rng.choice([0, 0, 1])}
        return Req("valid", "v1", "POST", V1, _json({"instances": [inst]}))

    def valid_v2() -> Req:
        body = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [m.png_b64]}],
            "parameters": {"scale": rng.choice([2, 4]), "steps": 0},
        }
        return Req("valid", "v2", "POST", V2, _json(body))

    def valid_v2_binary() -> Req:
        element = rng.choice([m.png, m.png_b64.encode()])  # the file itself, or its base64 text
        tensor = _bytes_tensor([element])
        head = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "parameters": {"scale": 2, "steps": 0, "binary_data_output": rng.random() < 0.5},
        }
        body, headers = _binary_v2(head, [tensor])
        return Req("valid", "v2_binary", "POST", V2, body, headers)

    def v1_params() -> Req:
        key = rng.choice(["scale", "steps", "seed", "strength", "output_format"])
        extremes = {
            "scale": [1.5, 5, 0, -4, 2**70, "4", None],
            "steps": [-1, 51, 2.5, 10**30, "3", True],
            "seed": [-1, 2**32, 2**40, 2**64, 1.5],
            "strength": [0, -0.1, 1.5, "x", 1e308],
            "output_format": ["jpeg", "PNG", "GeoTIFF", "", "\u00e9", 7],
        }
        value = rng.choice(extremes[key] + [_junk(rng)])
        return Req(
            "v1", f"param_{key}", "POST", V1, _json({"instances": [{"image_b64": m.png_b64, key: value}]})
        )

    def v1_structure() -> Req:
        variants: list[Any] = [
            [1, 2, 3],
            "instances",
            {"instances": "x"},
            {"instances": []},
            {"instances": [7]},
            {"instances": [{"scale": 4}]},
            {"instances": [{"image_b64": m.png_b64, "colour": "red"}]},
            {"instances": [{"image_b64": m.png_b64}], "parameters": {"scale": 4}},
            {"instances": [{"image_b64": m.png_b64}] * rng.choice([5, 6, 50])},
            {"instances": [{"image_b64": _junk(rng)}]},
            {"inputs": [{"image_b64": m.png_b64}]},
            {"instances": [{"image_b64": rng.choice(m.bad_images)}]},
            {"instances": [{"image_b64": rng.choice(list(m.header_only.values()))}]},
            {"instances": [{"image_b64": m.png_b64, "scale": _junk(rng), "steps": _junk(rng)}]},
        ]
        return Req("v1", "structure", "POST", V1, _json(rng.choice(variants)))

    def v1_raw() -> Req:
        variants = [
            b"this is not json",
            b'{"instances": [{"image_b64": "x", "scale": NaN}]}',
            b'{"instances": [',
            b"",
            b"null",
            b'"a JSON string"',
            b"\xef\xbb\xbf" + _json({"instances": [{"image_b64": m.png_b64}]}),
            json.dumps({"instances": [{"image_b64": m.png_b64}]}).encode("utf-16"),
            _nested(rng.choice([100, 1000, 5000])),
            b'{"instances": [{"image_b64": "' + m.png_b64.encode() + b'", "scale": 1' + b"0" * 400 + b"}]}",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))),
        ]
        return Req("v1", "raw", "POST", V1, rng.choice(variants))

    def v2_structure() -> Req:
        good_input = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [m.png_b64]}
        variants: list[Any] = [
            [],
            {"inputs": "image"},
            {"inputs": []},
            {"inputs": [good_input | {"datatype": rng.choice(["FP32", "FP16", "INT8", "FOO", 7])}]},
            {"inputs": [good_input | {"name": rng.choice(["x", "", None])}]},
            {"inputs": [good_input | {"shape": rng.choice([[2], [-1], [1, 1, 1], [], "1", [2**70]])}]},
            {"inputs": [good_input | {"data": rng.choice([[], [m.png_b64] * 2, [7], [[m.png_b64]], "x"])}]},
            {"inputs": [good_input], "parameters": {"scale": {"nested": 1}}},
            {"inputs": [good_input], "parameters": {"colour": "red"}},
            {"inputs": [good_input], "parameters": {"steps": rng.choice([51, -1, 2**40])}},
            {"inputs": [good_input], "outputs": [{"name": rng.choice(["nope", "sr", ""])}]},
            {"inputs": [good_input], "outputs": "image"},
            {"inputs": [good_input], "id": _junk(rng)},
            {"inputs": [good_input | {"parameters": {"binary_data_size": 10}}]},
            {"inputs": [good_input, good_input]},
            {"inputs": [good_input | {"data": [rng.choice(m.bad_images)]}]},
        ]
        return Req("v2", "structure", "POST", V2, _json(rng.choice(variants)))

    def v2_binary() -> Req:
        element = rng.choice([m.png, m.png_b64.encode(), b"", b"\x00" * 10])
        tensor = _bytes_tensor([element])
        size = len(tensor) + rng.choice([0, 0, -1, 1, 100, -len(tensor)])
        inp: dict[str, Any] = {"name": "image", "datatype": "BYTES", "shape": [rng.choice([1, 1, 2, 0])]}
        inp["parameters"] = {"binary_data_size": rng.choice([size, size, -5, "12", None])}
        head = {"inputs": [inp], "parameters": {"scale": 2, "steps": 0}}
        tail = rng.choice([tensor, tensor, tensor[:-2], tensor + b"xx", b"\xff\xff\xff\xff" + tensor])
        body, headers = _binary_v2(head, [tail])
        if rng.random() < 0.3:
            body, headers = _binary_v2(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [2],
                            "parameters": {"binary_data_size": 8},
                        }
                    ]
                },
                [b"\x00" * rng.choice([8, 7])],
            )
        return Req("v2", "binary", "POST", V2, body, headers)

    return [valid_v1, valid_v2, valid_v2_binary, v1_params, v1_structure, v1_raw, v2_structure, v2_binary]


def common_cases(m: Material, rng: random.Random, server: str) -> list[Callable[[], Req]]:
    """Headers, values, sizes and management cases; ``server`` is "transformer" or "predictor"."""

    def good_body(path: str) -> bytes:
        if server == "predictor":
            batch = m.batch(rng)
            return encode_v1(batch)[0] if path == V1 else encode_v2(batch, "b64")[0]
        if path == V1:
            return _json({"instances": [{"image_b64": m.png_b64, "scale": 2, "steps": 0}]})
        return _json(
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [m.png_b64]}],
                "parameters": {"scale": 2, "steps": 0},
            }
        )

    def content_types() -> Req:
        path = rng.choice([V1, V2])
        ctype = rng.choice(
            [
                "application/json; charset=utf-8",
                "Application/JSON",
                "APPLICATION/JSON;CHARSET=UTF-8",
                "application/json;",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/octet-stream",
                "application/cloudevents+json",
                "",
                ";;;",
                "application/" + "x" * 2000,
            ]
        )
        return Req("headers", "content_type", "POST", path, good_body(path), {"Content-Type": ctype})

    def header_length() -> Req:
        path = rng.choice([V1, V2])
        value = rng.choice(
            ["abc", "1e3", "-5", "", "0", "99999999999999999999", "12abc", "0x10", "+3", "1.5", "7"]
        )
        body = good_body(path)
        if value == "7":
            value = str(len(body) + 10)  # past the body
        return Req(
            "headers",
            "inference_header_content_length",
            "POST",
            path,
            body,
            {
                "Inference-Header-Content-Length": value,
                "Content-Type": rng.choice(["application/octet-stream", "application/json"]),
            },
        )

    def odd_headers() -> Req:
        path = rng.choice([V1, V2])
        headers = rng.choice(
            [
                {"X-Api-Key": "k" * 5000},
                {"X-Request-ID": "r" * 3000},
                {"X-Request-ID": ""},
                {"Accept": "application/xml"},
                {"Expect": "100-continue"},
                {"Content-Encoding": "gzip"},
                {"ce-specversion": "1.0", "ce-type": "x", "ce-source": "y", "ce-id": "1"},
            ]
        )
        if rng.random() < 0.2:  # chunked upload (no Content-Length): the cap applies while reading
            return Req("headers", "chunked", "POST", path, good_body(path), chunked=True)
        return Req("headers", "odd", "POST", path, good_body(path), headers)

    def sizes() -> Req:
        path = rng.choice([V1, V2])
        choice = rng.randrange(4)
        if choice == 0:  # over the body limit, refused from Content-Length (only a few: 70 MB each)
            size = 70 * 2**20 if server == "predictor" else 21 * 2**20
            return Req("sizes", "body_over_limit", "POST", path, b'{"instances": ["' + b"A" * size + b'"]}')
        if choice == 1 and server == "transformer":
            image = rng.choice(list(m.header_only.values()))
            return Req("sizes", "header_only_image", "POST", V1, _json({"instances": [{"image_b64": image}]}))
        if server == "predictor":
            return predictor_canvas(rng.random() < 0.5)
        return Req(
            "sizes", "many_instances", "POST", V1, _json({"instances": [{"image_b64": m.png_b64}] * 5})
        )

    def predictor_canvas(at_limit: bool) -> Req:
        """A 16384^2 canvas (over the limit: 413 before any allocation) or 8192^2 (at the limit: a
        noise field per seed, bounded by the LRU cache) with one small tile and a new seed."""
        side_out = 8192 if at_limit else 16384
        lr = side_out // 4
        canvas = Canvas.for_scale(lr, lr, 4.0, 4)
        r0, r1, _ = window_taps(lr, side_out, 0, 64)
        spec = TileSpec(Tile(0, 0, 64, 64), r0, r0, r1 - r0, r1 - r0)
        values = np.random.default_rng(rng.randrange(100)).random((3, r1 - r0, r1 - r0), dtype=np.float32)
        params = RenderParams(scale=4.0, steps=1, seed=rng.randrange(2**32))
        batch = TileBatch(canvas, [spec], [values], params)
        name = "canvas_at_limit" if at_limit else "canvas_16384"
        return Req(
            "sizes", name, "POST", V2, encode_v2(batch, "b64")[0], {"Content-Type": "application/json"}
        )

    def management() -> Req:
        token = rng.choice([None, "wrong", "Bearer wrong", "Bearer " + "x" * 40, "Basic YWRtaW46YWRtaW4="])
        headers = {"Authorization": token} if token else {}
        choice = rng.randrange(12)
        if choice < 3:
            action = rng.choice(["load", "unload"])
            model = rng.choice(["hndsr", "hndsr", "nope", "..%2F"])
            return Req(
                "management",
                f"repository_{action}",
                "POST",
                f"/v2/repository/models/{model}/{action}",
                b"",
                headers,
            )
        if choice == 3:
            return Req(
                "management",
                "method",
                rng.choice(["GET", "PUT", "DELETE", "PATCH"]),
                rng.choice([V1, V2]),
                b"",
            )
        if choice == 4:
            return Req(
                "management",
                "options",
                "OPTIONS",
                rng.choice([V1, V2, "/v2/repository/models/hndsr/load", "/health"]),
            )
        if choice == 5:
            return Req("management", "explain", "POST", "/v1/models/hndsr:explain", good_body(V1))
        if choice == 6:
            return Req("management", "versions", "POST", "/v2/models/hndsr/versions/1/infer", good_body(V2))
        if choice == 7:
            return Req(
                "management",
                "unknown_model",
                "POST",
                rng.choice(["/v1/models/nope:predict", "/v2/models/nope/infer"]),
                good_body(V1),
            )
        if choice == 8:
            path = rng.choice(
                [
                    "/nope",
                    "/v3/models/hndsr/infer",
                    "/v2/models/hndsr/infer/x",
                    "/" + "a" * 4000,
                    "/v2/models/%00/infer",
                    "/v1/models/hndsr:predict/",
                ]
            )
            return Req("management", "unknown_route", rng.choice(["GET", "POST"]), path, b"{}")
        path = rng.choice(
            [
                "/v2",
                "/v2/models/hndsr",
                "/v2/models/nope",
                "/v2/health/live",
                "/v2/health/ready",
                "/health",
                "/metrics",
                "/openapi.json",
                "/docs",
                "/v1/models",
                "/v2/models/hndsr/ready",
                "/",
            ]
        )
        return Req("management", "get", "GET", path)

    return [content_types, header_length, odd_headers, sizes, management]


def value_cases(m: Material, rng: random.Random, server: str) -> list[Callable[[], Req]]:
    def transformer_values() -> Req:
        name = rng.choice(list(m.tiffs))
        steps = rng.choice([0, 0, 1])
        if rng.random() < 0.5:
            body = _json({"instances": [{"image_b64": b64(m.tiffs[name]), "scale": 2, "steps": steps}]})
            return Req("values", f"tiff_{name}", "POST", V1, body)
        body = _json(
            {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(m.tiffs[name])]}
                ],
                "parameters": {"scale": 2, "steps": steps},
            }
        )
        return Req("values", f"tiff_{name}", "POST", V2, body)

    def predictor_values() -> Req:
        batch = m.batch(rng, steps=rng.choice([0, 1]))
        kind = rng.choice(["x255", "nan", "inf", "negative", "big"])
        for c in batch.crops:
            if kind == "x255":
                c *= 255.0
            elif kind == "nan":
                c[0, 0, 0] = np.nan
            elif kind == "inf":
                c[1, 1, 1] = -np.inf
            elif kind == "negative":
                c -= 0.5
            else:
                c[:] = 1e30
        encoding = rng.choice(["b64", "fp32_binary", "v1"])
        if encoding == "v1":
            body, headers = encode_v1(batch)
            return Req("values", f"lr_{kind}_v1", "POST", V1, body, headers)
        body, headers = encode_v2(batch, encoding)
        return Req("values", f"lr_{kind}_{encoding}", "POST", V2, body, headers)

    return [transformer_values] if server == "transformer" else [predictor_values]


def predictor_cases(m: Material, rng: random.Random) -> list[Callable[[], Req]]:
    def valid() -> Req:
        batch = m.batch(rng)
        encoding = rng.choice(["b64", "fp32_binary", "fp32_json", "v1"])
        if encoding == "v1":
            body, headers = encode_v1(batch)
            return Req("valid", "v1", "POST", V1, body, headers)
        body, headers = encode_v2(batch, encoding)
        return Req("valid", f"v2_{encoding}", "POST", V2, body, headers)

    def v2_params() -> Req:
        batch = m.batch(rng)
        doc = json.loads(encode_v2(batch, "b64")[0])
        key = rng.choice(
            [
                "scale",
                "steps",
                "seed",
                "strength",
                "lr_dtype",
                "tile_bits",
                "canvas_height",
                "lr_width",
                "out_width",
            ]
        )
        value = rng.choice(
            {
                "scale": [1.5, 5, "4", 2**70, None],
                "steps": [51, -1, 2**40, 2.5],
                "seed": [2**32, 2**40, -1, 2**64],
                "strength": [0, 2, "x", 1e308],
                "lr_dtype": ["float64", ["uint8"], 7, "uint8"],
                "tile_bits": [7, 32, "8", 2**70],
                "canvas_height": [0, -4, 2**31, 81, "80"],
                "lr_width": [0, 2**40, 25],
                "out_width": [1, 97, 2**35],
            }[key]
            + [_junk(rng)]
        )
        doc["parameters"][key] = value
        return Req("v2", f"param_{key}", "POST", V2, _json(doc))

    def v2_geometry() -> Req:
        batch = m.batch(rng)
        doc = json.loads(encode_v2(batch, "b64")[0])
        geo = doc["inputs"][1]
        choice = rng.randrange(8)
        if choice == 0:
            geo["data"] = [rng.choice([-4, 2**70, 3, 10**6, 1.5]) for _ in geo["data"]]
        elif choice == 1:
            geo["shape"] = rng.choice([[2, 7], [16], [2, 8, 1], [-1, 8]])
        elif choice == 2:
            geo["data"] = geo["data"][:8]
        elif choice == 3:
            geo["datatype"] = rng.choice(["FP32", "BYTES", "INT8"])
        elif choice == 4:  # tiny tiles
            geo["data"][:4] = [0, 0, rng.choice([4, 8]), rng.choice([4, 8])]
        elif choice == 5:
            doc["inputs"] = doc["inputs"][:1]
        elif choice == 6:
            doc["inputs"][0]["data"] = doc["inputs"][0]["data"][:1]
        else:
            doc["inputs"][0]["data"] = [
                rng.choice(["AAAA", "", "***", b64(b"\x00" * 12)]) for _ in doc["inputs"][0]["data"]
            ]
        return Req("v2", "geometry", "POST", V2, _json(doc))

    def v2_other() -> Req:
        batch = m.batch(rng)
        doc = json.loads(encode_v2(batch, "b64")[0])
        choice = rng.randrange(6)
        if choice == 0:
            doc["outputs"] = [{"name": rng.choice(["nope", "image", ""])}]
        elif choice == 1:
            doc["inputs"].append(
                {"name": "up", "datatype": "FP32", "shape": [2, 3, 4, 4], "data": [0.5] * 96}
            )
            del doc["inputs"][0]
        elif choice == 2:
            specs = batch.specs * 9  # 18 tiles: over the batch limit
            doc["inputs"][1]["shape"] = [len(specs), 8]
            doc["inputs"][1]["data"] = [v for s in specs for v in s.as_row()]
        elif choice == 3:
            doc = {
                "instances": [{"lr_b64": "AAAA", "geometry": rng.choice([[1] * 8, [], "x", [2**70] * 8])}],
                "parameters": doc["parameters"],
            }
            return Req("v1", "instances", "POST", V1, _json(doc))
        elif choice == 4:
            doc = rng.choice(
                [
                    {"instances": []},
                    {"instances": [{}]},
                    {"parameters": {}},
                    [],
                    {"instances": [1], "parameters": []},
                ]
            )
            return Req("v1", "structure", "POST", V1, _json(doc))
        else:
            return Req(
                "v2",
                "raw",
                "POST",
                rng.choice([V1, V2]),
                rng.choice([b"not json", _nested(1000), b'"string"', b"{", b"[]"]),
            )
        return Req("v2", "other", "POST", V2, _json(doc))

    def v2_binary_lr() -> Req:
        batch = m.batch(rng)
        body, headers = encode_v2(batch, "fp32_binary")
        head_len = int(headers["inference-header-content-length"])
        head = json.loads(body[:head_len])
        tail = body[head_len:]
        choice = rng.randrange(4)
        if choice == 0:
            head["inputs"][0]["parameters"]["binary_data_size"] += rng.choice([-4, 4, 1])
        elif choice == 1:
            head["inputs"][0]["shape"] = [2, 3, 1, 1]
        elif choice == 2:
            tail = tail[: len(tail) // 2]
        else:
            head["inputs"][0]["datatype"] = rng.choice(["FP16", "BYTES", "UINT8"])
        h = json.dumps(head).encode()
        return Req("v2", "binary_lr", "POST", V2, h + tail, {"Inference-Header-Content-Length": str(len(h))})

    return [valid, v2_params, v2_geometry, v2_other, v2_binary_lr]


def generate(server: str, n: int, seed: int, material: Material | None = None) -> Iterator[Req]:
    """``n`` requests for ``server``: a sixth valid, the rest spread over the categories, plus the
    take-down replays (five float 0-255 images / out-of-range crops in a row; four 16384^2 canvases)."""
    m = material or Material()
    rng = random.Random(f"{server}-{seed}")
    specific = transformer_cases(m, rng) if server == "transformer" else predictor_cases(m, rng)
    valid = [f for f in specific if f.__name__.startswith("valid")]
    malformed = [f for f in specific if not f.__name__.startswith("valid")]
    malformed += common_cases(m, rng, server) + value_cases(m, rng, server)
    replay = value_cases(m, random.Random(0), server)[0]
    for _ in range(5):  # a client's values, again and again: must never open a breaker
        yield replay()
    count = 5
    if server == "predictor":
        for _ in range(4):  # 16384^2 canvases with distinct seeds: refused before any allocation
            count += 1
            yield _canvas_case(m, rng, at_limit=False)
    big_bodies = 0
    while count < n:
        factory = rng.choice(valid) if rng.random() < 1 / 6 else rng.choice(malformed)
        req = factory()
        if req.name == "body_over_limit":
            big_bodies += 1
            if big_bodies > 3:
                continue
        count += 1
        yield req


def _canvas_case(m: Material, rng: random.Random, at_limit: bool) -> Req:
    sizes = next(f for f in common_cases(m, rng, "predictor") if f.__name__ == "sizes")
    while True:
        req = sizes()
        if req.name == ("canvas_at_limit" if at_limit else "canvas_16384"):
            return req


# ------------------------------------------------------------------------------------ running


def send(client: httpx.Client, base: str, req: Req) -> tuple[int, str]:
    """(status, error kind); status 0 for a transport error (connection reset, protocol error)."""
    try:
        content: Any = req.body
        if req.chunked and req.body is not None:
            body = req.body
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
        r = client.request(req.method, base + req.path, content=content, headers=req.headers)
    except httpx.HTTPError as exc:
        return 0, f"transport:{type(exc).__name__}"
    kind = ""
    if r.status_code >= 400:
        try:
            doc = r.json()
            kind = str(doc.get("kind", "")) if isinstance(doc, dict) else ""
            if not (isinstance(doc, dict) and {"error", "kind", "status"} <= set(doc)):
                kind = "NO_ERROR_BODY"
        except ValueError:
            kind = "NO_ERROR_BODY"
    return r.status_code, kind


def fuzz_server(
    base: str,
    server: str,
    n: int,
    seed: int,
    material: Material | None = None,
    log: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    per_category: dict[str, Counter[str]] = {}
    kinds: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    slowest: list[tuple[float, str]] = []
    with httpx.Client(timeout=120) as client:
        for req in generate(server, n, seed, material):
            t0 = time.perf_counter()
            status, kind = send(client, base, req)
            slowest.append((time.perf_counter() - t0, f"{req.category}/{req.name} -> {status}"))
            slowest = sorted(slowest, reverse=True)[:10]
            statuses[str(status)] += 1
            per_category.setdefault(req.category, Counter())[str(status)] += 1
            if kind:
                kinds[kind] += 1
            bad = status == 0 or status >= 500 or kind == "NO_ERROR_BODY"
            if bad and len(failures) < 50:
                failures.append(
                    {
                        "category": req.category,
                        "name": req.name,
                        "method": req.method,
                        "path": req.path[:200],
                        "status": status,
                        "kind": kind,
                        "headers": req.headers,
                        "body_head": (req.body or b"")[:200].decode("latin-1"),
                    }
                )
            if log is not None:
                log.append(
                    {
                        "server": server,
                        "category": req.category,
                        "name": req.name,
                        "status": status,
                        "kind": kind,
                    }
                )
    total = sum(statuses.values())
    return {
        "requests": total,
        "seconds": round(time.perf_counter() - started, 1),
        "statuses": dict(sorted(statuses.items())),
        "by_category": {c: dict(sorted(s.items())) for c, s in sorted(per_category.items())},
        "error_kinds": dict(kinds.most_common()),
        "server_errors": sum(v for k, v in statuses.items() if k != "0" and int(k) >= 500),
        "transport_errors": statuses.get("0", 0),
        "without_error_body": kinds.get("NO_ERROR_BODY", 0),
        "failures": failures,
        "slowest": [{"seconds": round(s, 3), "request": r} for s, r in slowest],
    }


def breaker_state(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sample_value(text, "hndsr_circuit_breaker_state")


def after_checks(pred_url: str, trans_url: str, material: Material) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, url in (("predictor", pred_url), ("transformer", trans_url)):
        out[f"{name}_breaker_state"] = breaker_state(url)
        out[f"{name}_health"] = httpx.get(url + "/health", timeout=10).status_code
        out[f"{name}_live"] = httpx.get(url + "/v2/health/live", timeout=10).status_code
    body = {"instances": [{"image_b64": material.png_b64, "scale": 4, "steps": 0}]}
    out["valid_request_after"] = httpx.post(trans_url + V1, json=body, timeout=120).status_code
    return out


def verdict(results: dict[str, Any]) -> list[str]:
    problems = []
    for server in ("predictor", "transformer"):
        r = results[server]
        if r["server_errors"] or r["transport_errors"] or r["without_error_body"]:
            problems.append(
                f"{server}: {r['server_errors']} 5xx, {r['transport_errors']} transport errors, "
                f"{r['without_error_body']} errors without the error body"
            )
    after = results["after"]
    for server in ("predictor", "transformer"):
        if after[f"{server}_breaker_state"] != 0.0:
            problems.append(f"{server} breaker not closed: {after[f'{server}_breaker_state']}")
        if after[f"{server}_health"] != 200 or after[f"{server}_live"] != 200:
            problems.append(f"{server} not healthy/live after the fuzz")
    if after["valid_request_after"] != 200:
        problems.append(f"a valid request after the fuzz got {after['valid_request_after']}")
    return problems


def run(pred_url: str, trans_url: str, n: int, seed: int) -> dict[str, Any]:
    material = Material()
    results: dict[str, Any] = {}

    def one(server: str, url: str) -> None:
        results[server] = fuzz_server(url, server, n, seed, material)

    threads = [
        threading.Thread(target=one, args=("predictor", pred_url)),
        threading.Thread(target=one, args=("transformer", trans_url)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results["after"] = after_checks(pred_url, trans_url, material)
    return results


# ------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path, ready: str = "/health", timeout_s: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "hndsr_cli", "serve", *args, "--http-port", str(self.port)]
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.log = log
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{args[0]} not ready in {timeout_s} s: {log.read_text()[-2000:]}")

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set of the process so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-server", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default="release", help="storage URI of the predictor's checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serving_fuzz.json")
    args = ap.parse_args()
    measurement = Measurement()  # the machine, the commit, the load average at the start and the end
    with tempfile.TemporaryDirectory(prefix="hndsr-fuzz-") as tmp_s:
        tmp = Path(tmp_s)
        token = tmp / "admin-token"
        token.write_text(ADMIN_TOKEN)
        started = time.perf_counter()
        pred = Proc(
            [
                "predictor",
                "--storage-uri",
                args.checkpoint,
                "--device",
                args.device,
                "--admin-token-file",
                str(token),
            ],
            tmp / "predictor.log",
        )
        trans = None
        try:
            trans = Proc(
                [
                    "transformer",
                    "--predictor-host",
                    pred.url.removeprefix("http://"),
                    "--rate-limit-rps",
                    "1000",
                    "--rate-limit-burst",
                    "1000",
                    "--admin-token-file",
                    str(token),
                ],
                tmp / "transformer.log",
            )
            rss_before = {
                "predictor": round(pred.peak_rss_mb(), 1),
                "transformer": round(trans.peak_rss_mb(), 1),
            }
            results = run(pred.url, trans.url, args.per_server, args.seed)
            results["peak_rss_mb"] = {
                "predictor": round(pred.peak_rss_mb(), 1),
                "transformer": round(trans.peak_rss_mb(), 1),
            }
            results["peak_rss_mb_before_fuzz"] = rss_before
        finally:
            if trans is not None:
                trans.stop()
            pred.stop()
        results["problems"] = verdict(results)
        results["setup"] = {
            "per_server": args.per_server,
            "seed": args.seed,
            "checkpoint": args.checkpoint,
            "device": args.device,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "wall_s": round(time.perf_counter() - started, 1),
            "command": "python benchmarks/serving_fuzz.py " + " ".join(sys.argv[1:]),
        }
    measurement.write("serving_fuzz", results, path=args.json)
    for server in ("predictor", "transformer"):
        r = results[server]
        print(
            f"{server}: {r['requests']} requests in {r['seconds']} s, statuses {r['statuses']}, "
            f"5xx {r['server_errors']}, transport errors {r['transport_errors']}"
        )
    print("after:", results["after"])
    print("peak RSS (MB):", results["peak_rss_mb"], "before the fuzz:", results["peak_rss_mb_before_fuzz"])
    print("problems:", results["problems"] or "none")
    print("raw:", args.json)
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
