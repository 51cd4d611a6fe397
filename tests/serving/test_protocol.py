"""Issue 15 through real servers: no client can take the service down, and a stock client just works.

The four take-down cases (a client's values opening the breakers, unauthenticated unload, memory not
bounded by the request, malformed headers answered with 500s and broken connections), content types
and KServe's own errors, NVIDIA's unmodified ``tritonclient`` (JSON and binary), the documented
validation, metric names (``promtool check metrics``) and a small version of
``benchmarks/serving_fuzz.py``. One predictor + transformer pair with an admin token.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servingstack import ROOT, Server, b64, png_bytes, predictor, transformer, write_checkpoint
from tooling import require_tool

pytest.importorskip("kserve")

from serving.batch_encode import TileBatch, _pad_stack, decode_v2_response, encode_v1, encode_v2
from serving.codec import RenderParams
from serving.metrics import sample_value
from serving.tile_crops import Canvas, crop, plan

V1 = "/v1/models/hndsr:predict"
V2 = "/v2/models/hndsr/infer"
TOKEN = "test-admin-token-0123456789abcdef"
GOOD = b64(png_bytes(16, 16, seed=2))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, Path]]:
    tmp = tmp_path_factory.mktemp("protocol")
    ckpt = write_checkpoint(tmp / "ckpt")
    token = tmp / "admin-token"
    token.write_text(TOKEN + "\n")
    pred = predictor(tmp, ckpt, "--admin-token-file", str(token)).start()
    try:
        args = ("--rate-limit-rps", "1000", "--rate-limit-burst", "1000", "--admin-token-file", str(token))
        trans = transformer(tmp, pred.url, *args).start()
        try:
            yield pred, trans, ckpt
        finally:
            trans.stop()
    finally:
        pred.stop()


def breaker(http: httpx.Client, server: Server) -> float:
    text = http.get(server.url + "/metrics").text
    return sample_value(text, "hndsr_circuit_breaker_state")


def assert_closed(http: httpx.Client, *servers: Server) -> None:
    for server in servers:
        assert breaker(http, server) == 0.0, server.args[0]
        assert http.get(server.url + "/health").status_code == 200, server.args[0]


def tile_batch(scale: float = 4.0, steps: int = 0, seed: int = 0, values: float = 1.0) -> TileBatch:
    lr = np.random.default_rng(seed).random((3, 40, 48), dtype=np.float32) * np.float32(values)
    canvas = Canvas.for_scale(40, 48, scale, 4)
    specs = plan(canvas, tile=128, overlap=32, halo=32, align=4)[:2]
    import torch

    crops = [crop(torch.from_numpy(lr), s).numpy() for s in specs]
    return TileBatch(canvas, specs, crops, RenderParams(scale=scale, steps=steps, seed=seed))


def float_tiff(values: np.ndarray) -> bytes:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    buf = io.BytesIO()
    c, h, w = values.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(buf, "w", driver="GTiff", width=w, height=h, count=c, dtype="float32") as dst:
            dst.write(values.astype(np.float32))
    return buf.getvalue()


def v1(**instance: object) -> dict[str, object]:
    return {"instances": [{"image_b64": GOOD, "scale": 2, "steps": 0} | instance]}


# ------------------------------------------------------------------------------------ defect 1


def test_a_clients_values_never_open_the_breakers(
    stack: tuple[Server, Server, Path], http: httpx.Client
) -> None:
    pred, trans, _ = stack
    rgb = np.random.default_rng(0).random((3, 24, 24), dtype=np.float32)
    tiffs = {"0-255": float_tiff(rgb * 255.0), "nan": float_tiff(np.where(rgb > 0.9, np.nan, rgb))}
    for _ in range(4):  # three were enough to open both breakers for everyone
        r = http.post(trans.url + V1, json=v1(image_b64=b64(tiffs["0-255"])))
        assert r.status_code == 422 and r.json()["kind"] == "invalid_values", r.text
        assert "outside [0, 1]" in r.json()["error"] and "255" in r.json()["error"]
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(tiffs["nan"])]}],
        "parameters": {"scale": 2, "steps": 0},
    }
    r = http.post(trans.url + V2, json=body)
    assert r.status_code == 422 and "non-finite" in r.json()["error"], r.text
    # The same values sent straight to the predictor as LR crops: every encoding, v1 and v2.
    for poison in ("x255", "nan"):
        batch = tile_batch()
        for c in batch.crops:
            if poison == "x255":
                c *= 255.0
            else:
                c[0, 0, 0] = np.nan
        requests = [encode_v2(batch, enc) for enc in ("b64", "fp32_binary")] + [encode_v1(batch)]
        for (content, headers), path in zip(requests, (V2, V2, V1), strict=True):
            r = http.post(pred.url + path, content=content, headers=headers)
            assert r.status_code == 422 and r.json()["kind"] == "invalid_values", (poison, path, r.text)
    assert_closed(http, pred, trans)
    assert http.post(trans.url + V1, json=v1()).status_code == 200


# ------------------------------------------------------------------------------------ defect 2


def test_model_repository_needs_the_admin_token_and_load_really_reloads(
    stack: tuple[Server, Server, Path], http: httpx.Client
) -> None:
    pred, trans, ckpt = stack
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for server in (pred, trans):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = http.post(server.url + "/v2/repository/models/hndsr/unload", headers=headers)
            assert r.status_code == 401 and r.json()["kind"] == "unauthorized", r.text
        assert http.post(server.url + "/v2/repository/models/nope/unload", headers=auth).status_code == 404
    assert http.post(trans.url + V1, json=v1()).status_code == 200  # nothing was unloaded

    content, headers = encode_v2(tile_batch(), "b64")
    r = http.post(pred.url + "/v2/repository/models/hndsr/unload", headers=auth)
    assert r.status_code == 200, r.text
    assert http.get(pred.url + "/v2/health/live").status_code == 503  # a liveness probe restarts it
    r = http.post(pred.url + V2, content=content, headers=headers)
    assert r.status_code == 503 and r.json()["kind"] == "not_ready" and "unloaded" in r.json()["error"]
    # "load" loads the checkpoint again, sha256 verified: a tampered file is refused ...
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + bytes(8))
    try:
        r = http.post(pred.url + "/v2/repository/models/hndsr/load", headers=auth)
        assert r.status_code == 503 and "sha256 mismatch" in r.json()["error"], r.text
        assert http.get(pred.url + "/v2/health/live").status_code == 503
    finally:
        weights.write_bytes(original)
    # ... and the intact one brings the model back.
    r = http.post(pred.url + "/v2/repository/models/hndsr/load", headers=auth)
    assert r.status_code == 200 and r.json()["model_version"], r.text
    assert http.get(pred.url + "/v2/health/live").status_code == 200
    assert http.post(pred.url + V2, content=content, headers=headers).status_code == 200
    # The transformer alike (it holds no weights: unload makes it not ready and not live).
    assert http.post(trans.url + "/v2/repository/models/hndsr/unload", headers=auth).status_code == 200
    assert http.get(trans.url + "/v2/health/live").status_code == 503
    r = http.post(trans.url + V1, json=v1())
    assert r.status_code == 503 and r.json()["kind"] == "not_ready", r.text
    assert http.post(trans.url + "/v2/repository/models/hndsr/load", headers=auth).status_code == 200
    assert http.post(trans.url + V1, json=v1()).status_code == 200
    assert_closed(http, pred, trans)


# ------------------------------------------------------------------------------------ defect 3


def _peak_rss_mb(server: Server) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmHWM")


def test_memory_is_bounded_before_anything_is_allocated(
    stack: tuple[Server, Server, Path], http: httpx.Client
) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import random

    import serving_fuzz

    pred, _, _ = stack
    material = serving_fuzz.Material()
    before = _peak_rss_mb(pred)
    rng = random.Random(0)
    for _ in range(4):  # the take-down case: 16384 x 16384 canvases, steps 1, four seeds
        req = serving_fuzz._canvas_case(material, rng, at_limit=False)
        r = http.post(pred.url + req.path, content=req.body, headers=req.headers)
        assert r.status_code == 413 and r.json()["kind"] == "canvas_too_large", r.text
    for _ in range(8):  # at the limit (8192^2): one noise field each, the cache bounded in bytes
        req = serving_fuzz._canvas_case(material, rng, at_limit=True)
        r = http.post(pred.url + req.path, content=req.body, headers=req.headers)
        assert r.status_code == 200, r.text
    grown = _peak_rss_mb(pred) - before
    assert grown < 700, f"the predictor's peak RSS grew by {grown:.0f} MB"  # was +4.1 GB (issue 15)
    # The predictor's body is capped too, from Content-Length before reading.
    r = http.post(
        pred.url + V2, content=b"{" + b" " * (65 * 2**20) + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["kind"] == "payload_too_large"


# ------------------------------------------------------------------------------------ defects 4 and 5


def _raw(conn: httpclient.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.getheader("inference-header-content-length"):  # a binary answer (the predictor's tiles)
        return r.status, data
    return r.status, json.loads(data) if data else None


def test_malformed_binary_header_is_a_400_and_the_connection_lives_on(
    stack: tuple[Server, Server, Path],
) -> None:
    pred, trans, _ = stack
    good = {
        "predictor": (V2, *encode_v2(tile_batch(), "b64")),
        "transformer": (V1, json.dumps(v1()).encode(), {"content-type": "application/json"}),
    }
    for server in (pred, trans):
        conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            for value in ("abc", "1e3", "-5", "99999999999", ""):
                for path in (V1, V2):
                    headers = {
                        "content-type": "application/octet-stream",
                        "inference-header-content-length": value,
                    }
                    status, doc = _raw(conn, path, b'{"inputs": []}', headers)
                    assert status == 400 and doc["kind"] == "invalid_header", (server.args[0], value, doc)
                path, body, headers = good[server.args[0]]
                status, doc = _raw(conn, path, body, headers)  # the same keep-alive connection
                assert status == 200, (server.args[0], doc)
        finally:
            conn.close()


def test_content_types_and_kservers_own_errors(
    stack: tuple[Server, Server, Path], http: httpx.Client
) -> None:
    pred, trans, _ = stack
    body = json.dumps(v1()).encode()
    for ctype in (
        "application/json; charset=utf-8",
        "Application/JSON",
        "APPLICATION/JSON;CHARSET=UTF-8",
        None,
    ):
        headers = {"content-type": ctype} if ctype else {}
        r = http.post(trans.url + V1, content=body, headers=headers)
        assert r.status_code == 200, (ctype, r.text)
    for server, path in ((trans, V1), (trans, V2), (pred, V1), (pred, V2)):
        for content, headers, message in (
            (b'"a JSON string"', {"content-type": "application/json"}, ""),
            (b"[" * 1000 + b"]" * 1000, {"content-type": "application/json"}, "deeper"),
            (b"{}", {"content-type": "application/octet-stream"}, "Inference-Header-Content-Length"),
            (b"not json", {"content-type": "text/plain"}, "not valid JSON"),
        ):
            r = http.post(server.url + path, content=content, headers=headers)
            doc = r.json()
            assert r.status_code == 400 and set(doc) == {"error", "kind", "status"}, (
                path,
                content[:20],
                r.text,
            )
            assert doc["kind"] in ("bad_request", "invalid_header") and message in doc["error"], doc
    metrics = http.get(trans.url + "/metrics").text
    with pytest.raises(KeyError):
        sample_value(metrics, "hndsr_errors_total", kind="http_400")


# ------------------------------------------------------------------------------------ defect 6


def test_tritonclient_infer_works_unmodified(stack: tuple[Server, Server, Path]) -> None:
    th = pytest.importorskip("tritonclient.http")
    pred, trans, _ = stack
    client = th.InferenceServerClient(f"127.0.0.1:{trans.port}")
    meta = client.get_model_metadata("hndsr")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert meta["outputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [1]}
    assert meta["outputs"][1:] == [{"name": "uncertainty", "datatype": "BYTES", "shape": [1]}]  # samples >= 2
    png = png_bytes(16, 16, seed=2)
    for binary_in, binary_out, element in (
        (True, True, png),  # tritonclient's defaults, with the file's own bytes
        (True, False, GOOD.encode()),
        (False, True, GOOD.encode()),
        (False, False, GOOD.encode()),
    ):
        inp = th.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=binary_in)
        out = th.InferRequestedOutput("image", binary_data=binary_out)
        result = client.infer("hndsr", [inp], outputs=[out], parameters={"scale": 2, "steps": 0})
        image = result.as_numpy("image")[0]
        decoded = base64.b64decode(image if isinstance(image, bytes) else image.encode())
        assert decoded.startswith(b"\x89PNG"), (binary_in, binary_out)
        assert result.get_response()["parameters"]["width"] == 32
    # The predictor: a tile batch as an FP32 tensor + INT64 geometry, parameters as request parameters.
    client = th.InferenceServerClient(f"127.0.0.1:{pred.port}")
    meta = client.get_model_metadata("hndsr")
    assert [i["name"] for i in meta["inputs"]] == ["lr", "geometry"] and meta["outputs"][0]["name"] == "sr"
    batch = tile_batch()
    content, headers = encode_v2(batch, "b64")
    with httpx.Client(timeout=120) as http:
        r = http.post(pred.url + V2, content=content, headers=headers)
    want = decode_v2_response(r.content, r.headers).sr
    stacked = _pad_stack(batch.crops)  # crops of different sizes, zero-padded as encode_v2 does
    geometry = np.array([s.as_row() for s in batch.specs], dtype=np.int64)
    for binary in (True, False):
        lr = th.InferInput("lr", list(stacked.shape), "FP32")
        lr.set_data_from_numpy(stacked, binary_data=binary)
        geo = th.InferInput("geometry", list(geometry.shape), "INT64")
        geo.set_data_from_numpy(geometry, binary_data=binary)
        out = th.InferRequestedOutput("sr", binary_data=binary)
        result = client.infer("hndsr", [lr, geo], outputs=[out], parameters=batch.parameters())
        np.testing.assert_array_equal(result.as_numpy("sr"), want)


# ------------------------------------------------------------------------------------ defect 7


def test_documented_validation_is_enforced(stack: tuple[Server, Server, Path], http: httpx.Client) -> None:
    pred, trans, _ = stack
    r = http.post(trans.url + V1, json=v1() | {"parameters": {"scale": 4}})
    assert r.status_code == 400 and "unknown top-level keys" in r.json()["error"]
    r = http.post(trans.url + V1, json={"instances": [v1()["instances"][0]] * 5})  # type: ignore[index]
    assert r.status_code == 413 and r.json()["kind"] == "too_many_instances"
    for key, value, kind in (("steps", 51, "invalid_steps"), ("seed", 2**40, "invalid_seed")):
        doc = json.loads(encode_v2(tile_batch(), "b64")[0])
        doc["parameters"][key] = value
        r = http.post(pred.url + V2, json=doc)
        assert r.status_code == 422 and r.json()["kind"] == kind, r.text
    doc = json.loads(encode_v2(tile_batch(), "b64")[0])
    doc["outputs"] = [{"name": "nope"}]
    r = http.post(pred.url + V2, json=doc)
    assert r.status_code == 400 and "unknown output 'nope'" in r.json()["error"]
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [GOOD]}],
        "parameters": {"scale": 2},
        "outputs": [{"name": "nope"}],
    }
    r = http.post(trans.url + V2, json=body)
    assert r.status_code == 400 and "unknown output 'nope'" in r.json()["error"]
    for server in (pred, trans):
        paths = http.get(server.url + "/openapi.json").json()["paths"]
        for path in ("/v1/models/{model_name}:predict", "/v2/models/{model_name}/infer"):
            assert {"400", "413", "422", "429", "503"} <= set(paths[path]["post"]["responses"]), path
        for path in (V1, V2):
            r = http.options(server.url + path)
            assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, POST"
        r = http.get(server.url + V2)
        assert (
            r.status_code == 405 and "POST" in r.headers["allow"] and r.json()["kind"] == "method_not_allowed"
        )
        for method, path in (
            ("POST", "/v1/models/hndsr:explain"),
            ("POST", "/v2/models/hndsr/versions/1/infer"),
            ("GET", "/nope"),
            ("POST", "/v1/models/nope:predict"),
        ):
            r = http.request(method, server.url + path, json=v1())
            assert r.status_code == 404 and set(r.json()) == {"error", "kind", "status"}, (path, r.text)


# ------------------------------------------------------------------------------------ defect 10


def test_metrics_follow_the_prometheus_conventions(
    stack: tuple[Server, Server, Path], http: httpx.Client, tmp_path: Path
) -> None:
    promtool = require_tool("promtool")
    pred, trans, _ = stack
    assert http.post(trans.url + V1, json=v1()).status_code == 200
    for server in (pred, trans):
        text = http.get(server.url + "/metrics").text
        assert "hndsr_inference_latency_seconds_bucket" in text and "_latency_ms" not in text
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert done.returncode == 0, (server.args[0], done.stdout, done.stderr)


# ------------------------------------------------------------------------------------ fuzz


def test_fuzz_gives_no_5xx_and_keeps_the_breakers_closed(
    stack: tuple[Server, Server, Path], http: httpx.Client
) -> None:
    """benchmarks/serving_fuzz.py at a tenth of its size (the full run: 1,000 per server)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import serving_fuzz

    pred, trans, _ = stack
    results = serving_fuzz.run(pred.url, trans.url, 100, seed=7)
    for server in ("predictor", "transformer"):
        r = results[server]
        print(server, r["statuses"])
        assert r["requests"] >= 100 and r["statuses"].get("200", 0) >= 5, r["statuses"]
        assert len([s for s in r["statuses"] if s.startswith("4")]) >= 4, r["statuses"]
    assert serving_fuzz.verdict(results) == [], (
        results["predictor"]["failures"],
        results["transformer"]["failures"],
    )
    assert_closed(http, pred, trans)
