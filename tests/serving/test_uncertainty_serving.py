"""Uncertainty on the servers (issue #21): ``samples`` K seeded draws whose mean is the image and whose
per-pixel std is a last GeoTIFF band or a second PNG; parsing, admission work, the predictor in process
and the real transformer -> predictor pair."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from servingstack import (
    Server,
    b64,
    png_bytes,
    rgbn_geotiff,
    write_checkpoint,
)

pytest.importorskip("kserve")

from hndsr.image_read import read_image_bytes
from hndsr.model_pass import mean_and_spread
from serving.batch_params import render_params
from serving.codec import RenderParams, tile_values
from serving.errors import BadRequest, Unprocessable
from serving.metrics import ServingMetrics, sample_value
from serving.tile_crops import Canvas
from serving.transformer import planned_work
from serving.validation import Limits, SRInput, SRParams, parse_params

V1 = "/v1/models/hndsr:predict"
V2 = "/v2/models/hndsr/infer"


# ------------------------------------------------------------------------------------ units


def test_samples_parameter_is_checked_with_a_message() -> None:
    assert parse_params({}, Limits(), "p").samples == 1
    assert parse_params({"samples": 4, "steps": 2}, Limits(), "p").samples == 4
    assert parse_params({"samples": 16}, Limits(), "p").samples == 16  # steps: the model's default
    for bad, kind in ((0, Unprocessable), (17, Unprocessable), (-2, Unprocessable), ("4", BadRequest)):
        with pytest.raises(kind, match="samples"):
            parse_params({"samples": bad, "steps": 2}, Limits(), "p")
    with pytest.raises(Unprocessable, match="steps > 0") as info:
        parse_params({"samples": 4, "steps": 0}, Limits(), "p")
    assert info.value.kind == "invalid_samples"
    # The predictor's own parsing of a tile batch: the same rules.
    assert render_params({"scale": 4.0, "samples": 3, "steps": 1}).samples == 3
    with pytest.raises(Unprocessable, match=r"\[2, 16\]"):
        render_params({"scale": 4.0, "samples": 20, "steps": 1})
    with pytest.raises(Unprocessable, match="diffusion path"):
        render_params({"scale": 4.0, "samples": 2, "steps": 0})
    with pytest.raises(BadRequest, match="integer"):
        render_params({"scale": 4.0, "samples": 2.5})


def test_one_sample_keeps_the_wire_format() -> None:
    assert "samples" not in RenderParams(scale=4.0, steps=2).as_params()
    assert RenderParams(scale=4.0, steps=2).channels == 3
    four = RenderParams(scale=4.0, steps=2, samples=4)
    assert four.as_params()["samples"] == 4 and four.channels == 4


def test_admission_counts_k_samples_as_k_times_the_work() -> None:
    canvas = Canvas.for_scale(64, 64, 4.0, 4)
    specs: list = [object()] * 6  # six tiles of 256 px
    plans = [(canvas, 256, specs), (canvas, 256, specs)]

    def inp(samples: int) -> SRInput:
        return SRInput(b"", SRParams(4.0, 2, 0, None, "png", samples=samples), 0)

    one = planned_work([inp(1), inp(1)], plans)
    assert one == pytest.approx(2 * 6 * 256 * 256 / 1e6)
    assert planned_work([inp(4), inp(1)], plans) == pytest.approx(one * 5 / 2)
    assert planned_work([inp(16), inp(16)], plans) == pytest.approx(16 * one)


def test_uncertainty_histogram() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, revision="r1")
    metrics.add_uncertainty(0.012, "v1")
    metrics.add_uncertainty(float("nan"), "v1")  # never observed
    text = generate_latest(registry).decode()
    assert sample_value(text, "hndsr_uncertainty_mean_count", model_version="v1", revision="r1") == 1
    assert sample_value(text, "hndsr_uncertainty_mean_bucket", le="0.015") == 1
    assert sample_value(text, "hndsr_uncertainty_mean_bucket", le="0.01") == 0


# ------------------------------------------------------------------------------------ predictor


def test_predictor_k_draws_are_the_mean_and_spread_of_single_draws(tmp_path: Path) -> None:
    from test_predictor_model import batch_for, make, run

    from hndsr.tiling import Stitcher

    p = make(write_checkpoint(tmp_path / "ckpt"))
    assert p.load()
    lr = torch.rand(3, 40, 44)
    singles = []
    for seed in (5, 6, 7):
        batch, _, _ = batch_for(lr, 4.0, steps=2, seed=seed)
        singles.append(torch.from_numpy(tile_values(run(p, batch)[2])))
    batch, canvas, _ = batch_for(lr, 4.0, steps=2, seed=5)
    batch.params = RenderParams(scale=4.0, steps=2, seed=5, samples=3)
    _, _, sr, _, steps = run(p, batch)
    assert sr.dtype == np.uint16 and sr.shape[1] == 4 and steps == 2
    want = mean_and_spread(torch.stack(singles))
    # Single draws travelled quantised (half a step each); the combined tiles are quantised once.
    torch.testing.assert_close(torch.from_numpy(tile_values(sr)), want, rtol=0, atol=2.0 / 65535)
    assert float(want[:, 3].mean()) > 1e-4  # the draws differ: there is something to measure
    again = run(p, batch)[2]
    np.testing.assert_array_equal(sr, again)  # seeded: the same bytes
    stitcher = Stitcher(4, canvas.canvas_h, canvas.canvas_w, overlap=32, halo=32)
    for spec, values in zip(batch.specs, sr, strict=True):
        stitcher.add(spec.tile, torch.from_numpy(tile_values(values)))
    assert stitcher.result().shape[0] == 4


def test_predictor_refuses_samples_on_the_default_deterministic_path(tmp_path: Path) -> None:
    """steps left to a model whose default is 0: a 422 from the predictor, never a breaker failure."""
    from test_predictor_model import batch_for, make, run

    from serving.breaker import BreakerState

    p = make(write_checkpoint(tmp_path / "ckpt"), breaker_threshold=2)
    assert p.load()
    batch, _, _ = batch_for(torch.rand(3, 16, 16), 2.0, steps=None)
    batch.params = RenderParams(scale=2.0, samples=4)
    for _ in range(4):
        with pytest.raises(Unprocessable, match="steps > 0") as info:
            run(p, batch)
        assert info.value.status == 422
    assert p.breaker.state is BreakerState.CLOSED and p.breaker._failures == 0
    assert asyncio.run(p.healthy())


# ------------------------------------------------------------------------------------ real servers


def grey16(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.mode in ("I;16", "I;16B", "I"), img.mode
    return np.asarray(img).astype(np.float64) / 65535.0


def test_v1_png_gets_a_second_uncertainty_png_deterministically(
    stack: tuple[Server, Server], http: httpx.Client
) -> None:
    _, trans = stack
    data = png_bytes(90, 100, seed=3)
    body = {"instances": [{"image_b64": b64(data), "scale": 4, "steps": 2, "seed": 9, "samples": 4}]}
    r = http.post(trans.url + V1, json=body)
    assert r.status_code == 200, r.text
    out = r.json()["predictions"][0]
    assert out["samples"] == 4 and out["tiles"] > 1  # stitched across tiles
    image = read_image_bytes(base64.b64decode(out["image_b64"]))
    assert image.data.shape == (3, 360, 400)
    std = grey16(base64.b64decode(out["uncertainty_png_b64"]))
    assert std.shape == (360, 400) and std.max() > 0 and std.max() <= 0.5
    assert out["uncertainty_mean"] == pytest.approx(std.mean(), abs=1e-4)
    again = http.post(trans.url + V1, json=body).json()["predictions"][0]
    assert (
        again["image_b64"] == out["image_b64"] and again["uncertainty_png_b64"] == out["uncertainty_png_b64"]
    )
    # One sample: no uncertainty fields, and the image of draw 0 alone (not the mean).
    single = http.post(trans.url + V1, json={"instances": [body["instances"][0] | {"samples": 1}]})
    plain = single.json()["predictions"][0]
    assert "uncertainty_png_b64" not in plain and "samples" not in plain
    assert plain["image_b64"] != out["image_b64"]


def test_v2_geotiff_gets_a_last_uncertainty_band_with_georeferencing(
    stack: tuple[Server, Server], http: httpx.Client
) -> None:
    _, trans = stack
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(rgbn_geotiff())]}],
        "parameters": {"scale": 2.5, "steps": 2, "seed": 11, "samples": 3, "output_format": "geotiff"},
    }
    r = http.post(trans.url + V2, json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [o["name"] for o in doc["outputs"]] == ["image"]  # the std travels inside the GeoTIFF
    assert doc["parameters"]["samples"] == 3 and doc["parameters"]["uncertainty_mean"] > 0
    raw = base64.b64decode(doc["outputs"][0]["data"][0])
    with rasterio.open(io.BytesIO(raw)) as src:
        assert src.count == 5 and src.dtypes[0] == "uint16"
        assert src.descriptions[-1] == "uncertainty"  # last: after R, G, B and the carried band
        assert src.crs.to_epsg() == 32633
        a, _, c, _, e, f = tuple(src.transform)[:6]
        assert (a, e, c, f) == pytest.approx((4.0, -4.0, 300000.0, 5000000.0))
        std = src.read(5).astype(np.float64) / 65535.0
    assert std.shape == (100, 120) and 0 < std.mean() < 0.5
    assert doc["parameters"]["uncertainty_mean"] == pytest.approx(std.mean(), abs=1e-4)


def test_v2_png_gets_a_second_output_tensor(stack: tuple[Server, Server], http: httpx.Client) -> None:
    _, trans = stack
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(png_bytes(40, 52))]}],
        "parameters": {"scale": 4, "steps": 1, "samples": 2},
    }
    r = http.post(trans.url + V2, json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"image", "uncertainty"}
    std = grey16(base64.b64decode(outputs["uncertainty"]["data"][0]))
    assert std.shape == (160, 208)
    image = read_image_bytes(base64.b64decode(outputs["image"]["data"][0]))
    assert image.data.shape == (3, 160, 208) and image.dtype == "uint8"


BAD_SAMPLES: list[tuple[str, dict[str, object], int, str]] = [
    (V1, {"samples": 1.5, "steps": 2}, 400, "integer"),
    (V1, {"samples": "4", "steps": 2}, 400, "integer"),
    (V1, {"samples": 17, "steps": 2}, 422, "[2, 16]"),
    (V1, {"samples": 0, "steps": 2}, 422, "[2, 16]"),
    (V1, {"samples": 4, "steps": 0}, 422, "steps > 0"),
    (V1, {"samples": 4}, 422, "steps > 0"),  # the model's default steps are 0: the predictor says so
    (V2, {"samples": 99, "steps": 2}, 422, "[2, 16]"),
    (V2, {"samples": 2, "steps": 0}, 422, "steps > 0"),
]


def test_bad_samples_are_4xx_and_never_open_the_breaker(
    stack: tuple[Server, Server], http: httpx.Client
) -> None:
    pred, trans = stack
    image = b64(png_bytes(24, 24))
    for _ in range(2):  # more client errors than the breaker's threshold (3)
        for path, params, status, message in BAD_SAMPLES:
            if path == V1:
                body: dict[str, object] = {"instances": [{"image_b64": image, "scale": 4} | params]}
            else:
                inputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]
                body = {"inputs": inputs, "parameters": {"scale": 4} | params}
            r = http.post(
                trans.url + path, content=json.dumps(body), headers={"content-type": "application/json"}
            )
            assert r.status_code == status, (params, r.text)
            assert message in r.json()["error"], r.text
    for server in (trans, pred):
        health = http.get(server.url + "/health").json()
        assert health["circuit_breaker"] == "CLOSED" and health["ready"], health


def test_uncertainty_metric_is_exported(stack: tuple[Server, Server], http: httpx.Client) -> None:
    _, trans = stack
    body = {
        "instances": [{"image_b64": b64(png_bytes(24, 24, seed=2)), "scale": 2, "steps": 1, "samples": 2}]
    }
    assert http.post(trans.url + V1, json=body).status_code == 200
    text = http.get(trans.url + "/metrics").text
    assert sample_value(text, "hndsr_uncertainty_mean_count") >= 1
    assert sample_value(text, "hndsr_uncertainty_mean_sum") > 0
