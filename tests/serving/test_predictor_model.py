"""The predictor model in process: loading and readiness, equality with the core engine, the circuit
breaker on real inference failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from servingstack import tiny_model, write_checkpoint

pytest.importorskip("kserve")

from hndsr.checkpoint import CONFIG_FILE, save_checkpoint
from hndsr.inference import Upscaler
from hndsr.tiling import Stitcher
from serving.batch_decode import BatchLimits, DecodedBatch, decode_v1_request
from serving.batch_encode import TileBatch, encode_v1
from serving.breaker import BreakerState
from serving.codec import RenderParams, tile_values
from serving.errors import CircuitOpen, InferenceFailed, NotReady
from serving.metrics import ServingMetrics
from serving.predictor import HNDSRPredictor, PredictorSettings
from serving.tile_crops import Canvas, crop, plan


def make(ckpt: Path, **kw: Any) -> HNDSRPredictor:
    from prometheus_client import CollectorRegistry

    settings = PredictorSettings(storage_uri=str(ckpt), device="cpu", **kw)
    return HNDSRPredictor("hndsr", settings, ServingMetrics(CollectorRegistry()))


def batch_for(
    lr: torch.Tensor, scale: float, steps: int | None = 0, seed: int = 0
) -> tuple[DecodedBatch, Canvas, int]:
    canvas = Canvas.for_scale(lr.shape[1], lr.shape[2], scale, 4)
    specs = plan(canvas, tile=128, overlap=32, halo=32, align=4)
    tb = TileBatch(
        canvas, specs, [crop(lr, s).numpy() for s in specs], RenderParams(scale=scale, steps=steps, seed=seed)
    )
    import orjson

    body, _ = encode_v1(tb)
    return decode_v1_request(orjson.loads(body), BatchLimits()), canvas, 128


def run(p: HNDSRPredictor, batch: DecodedBatch) -> Any:
    return asyncio.run(p.predict(("v1", batch)))


@pytest.mark.parametrize(("grid", "scale"), [("latent", 4.0), ("lr", 4.0), ("lr", 2.5)])
def test_ready_after_load_and_equal_to_the_engine(tmp_path: Path, grid: str, scale: float) -> None:
    p = make(write_checkpoint(tmp_path / "ckpt", grid))
    assert p.load() and asyncio.run(p.healthy())
    assert p.status()["status"] == "ready" and p.model_version.startswith("0.1.0+")
    lr = torch.rand(3, 40, 44)
    for steps in (0, 2):
        batch, canvas, tile = batch_for(lr, scale, steps=steps, seed=5)
        _, _, sr, _, _ = run(p, batch)
        stitcher = Stitcher(3, canvas.canvas_h, canvas.canvas_w, overlap=32, halo=32)
        for spec, values in zip(batch.specs, sr, strict=True):
            stitcher.add(spec.tile, torch.from_numpy(tile_values(values)))
        served = stitcher.result()[:, : canvas.out_h, : canvas.out_w].clamp(0, 1)
        engine = Upscaler(tiny_model(grid), tile=tile, overlap=32, halo=32, batch_size=p.compute_batch)
        whole = engine.upscale(lr, scale=scale, steps=steps, seed=5)  # same bicubic, noise, model, stitching
        # Equal but for the UINT16 wire format (steps of 1/65535, rounded: at most half a step).
        assert values.dtype == np.uint16
        torch.testing.assert_close(served, whole, rtol=0, atol=0.5 / 65535 + 1e-6)


def test_tampered_checkpoint_is_never_ready(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    p = make(ckpt)
    assert not p.load() and not asyncio.run(p.healthy())
    status = p.status()
    assert status["status"] == "failed" and "sha256 mismatch" in status["reason"]
    batch, _, _ = batch_for(torch.rand(3, 16, 16), 2.0)
    with pytest.raises(NotReady, match="sha256 mismatch"):
        run(p, batch)


def test_broken_weights_fail_the_warmup(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.autoencoder.decoder_tail.bias.fill_(float("nan"))
    p = make(save_checkpoint(model, tmp_path / "nan", stages=["autoencoder"]))
    assert not p.load()
    assert "warm-up" in p.status()["reason"] and "non-finite" in p.status()["reason"]


def test_pinned_hash_and_missing_checkpoint(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    p = make(ckpt, expected_sha256="0" * 64)
    assert not p.load() and "pins" in p.status()["reason"]
    missing = make(tmp_path / "nope")
    assert not missing.load() and "does not exist" in missing.status()["reason"]
    assert json.loads((ckpt / CONFIG_FILE).read_text())["sha256"]


def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
    """A model whose device has failed."""
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _loaded(p: HNDSRPredictor) -> tuple[Any, Any]:
    """Load ``p``; its model's working render and a small batch to run."""
    assert p.load()
    assert p.model is not None
    batch, _, _ = batch_for(torch.rand(3, 16, 16), 2.0)
    return p.model.render, batch


def test_breaker_opens_after_three_failures_and_recovers(tmp_path: Path) -> None:
    p = make(write_checkpoint(tmp_path / "ckpt"), breaker_reset_s=0.2)
    render, batch = _loaded(p)
    p.model.render = broken  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(InferenceFailed, match="illegal memory access"):
            run(p, batch)
    assert p.breaker.state is BreakerState.OPEN and not asyncio.run(p.healthy())
    assert p.status()["status"] == "degraded"
    with pytest.raises(CircuitOpen):
        run(p, batch)  # at once, without touching the model
    import time

    time.sleep(0.25)
    assert p.breaker.state is BreakerState.HALF_OPEN
    p.model.render = render  # type: ignore[method-assign]
    run(p, batch)
    assert p.breaker.state is BreakerState.CLOSED and asyncio.run(p.healthy())


def test_breaker_self_test_closes_it_once_the_device_works_again(tmp_path: Path) -> None:
    """While OPEN, the warm-up inference is re-run every probe interval: no blind trial after
    breaker_reset_s (600 s here), no client request needed to find out that the device is back."""
    p = make(write_checkpoint(tmp_path / "ckpt"), breaker_reset_s=600.0, breaker_probe_s=0.05)
    render, batch = _loaded(p)

    async def scenario() -> tuple[BreakerState, BreakerState, int]:
        assert p.model is not None
        p.model.render = broken  # type: ignore[method-assign]
        for _ in range(3):
            with pytest.raises(InferenceFailed):
                await p.predict(("v1", batch))
        assert p.probe.running
        await asyncio.sleep(0.3)  # probes run and fail: the device is still broken
        still_open = p.breaker.state
        p.model.render = render  # type: ignore[method-assign]
        for _ in range(600):  # 60 s at most; one probe interval on a quiet machine
            if p.breaker.state is BreakerState.CLOSED:
                break
            await asyncio.sleep(0.1)
        return still_open, p.breaker.state, p.probe.probes

    still_open, state, probes = asyncio.run(scenario())
    assert still_open is BreakerState.OPEN and state is BreakerState.CLOSED and probes >= 2
    assert asyncio.run(p.healthy()) and p.status()["status"] == "ready"


def test_output_check_failure_is_the_clients_while_the_self_check_passes(tmp_path: Path) -> None:
    """An output check that fails on this input while the model's warm-up tile still passes is a 422
    that never counts against the breaker; when the self-check fails too, it is the model's 500."""
    import serving.predictor as predictor_module
    from hndsr.errors import OutputValidationError
    from serving.errors import OutputCheckFailed, Unprocessable

    p = make(write_checkpoint(tmp_path / "ckpt"), breaker_threshold=2)
    assert p.load()
    batch, _, _ = batch_for(torch.rand(3, 16, 16), 2.0)
    real = predictor_module.check_output
    calls = {"n": 0}

    def fails_for_requests(sr: torch.Tensor, up: torch.Tensor, *, floor: float = 0.25) -> torch.Tensor:
        calls["n"] += 1
        if up.shape[-1] != 128:  # the warm-up tile is 128 px: it still passes
            raise OutputValidationError("model output range [-133.9, 354.0] is far outside [0, 1]")
        return real(sr, up, floor=floor)

    predictor_module.check_output = fails_for_requests  # type: ignore[assignment]
    try:
        for _ in range(4):
            with pytest.raises(Unprocessable, match="self-check") as info:
                run(p, batch)
            assert info.value.status == 422 and info.value.kind == "image_not_processable"
        assert p.breaker.state is BreakerState.CLOSED and p.breaker._failures == 0

        def always_fails(sr: torch.Tensor, up: torch.Tensor, *, floor: float = 0.25) -> torch.Tensor:
            raise OutputValidationError("model produced non-finite values")

        predictor_module.check_output = always_fails  # type: ignore[assignment]
        for _ in range(2):
            with pytest.raises(OutputCheckFailed, match="self-check fails too"):
                run(p, batch)
        assert p.breaker.state is BreakerState.OPEN
    finally:
        predictor_module.check_output = real  # type: ignore[assignment]


def test_noise_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    p = make(write_checkpoint(tmp_path / "ckpt"), noise_cache_bytes=3 * 4 * 64 * 64 * 4)
    for seed in range(10):
        p.noise.get(seed, 4, 64, 64)  # 64 KiB each: three fit
        assert p.noise.bytes <= p.settings.noise_cache_bytes
    assert len(p.noise.fields) == 3 and list(k[0] for k in p.noise.fields) == [7, 8, 9]
    big = p.noise.get(99, 4, 256, 256)  # larger than the whole budget: made, not kept
    assert big.shape == (4, 256, 256) and (99, 4, 256, 256) not in p.noise.fields
    assert p.noise.bytes == sum(f.numel() * 4 for f in p.noise.fields.values())


def test_canvas_limits_are_checked_before_allocating() -> None:
    from serving.batch_decode import check_canvas
    from serving.errors import BadRequest, PayloadTooLarge

    limits = BatchLimits()
    check_canvas(Canvas.for_scale(2048, 2048, 4.0, 4), 4.0, limits)  # the transformer's largest image
    with pytest.raises(PayloadTooLarge, match="canvas") as info:
        check_canvas(Canvas.for_scale(4096, 4096, 4.0, 4), 4.0, limits)  # 16384^2: the take-down case
    assert info.value.kind == "canvas_too_large"
    with pytest.raises(PayloadTooLarge):
        check_canvas(Canvas(10, 10, 40, 10**6, 40, 10**6), 4.0, limits)  # one side far too long
    with pytest.raises(BadRequest, match="disagree"):
        check_canvas(Canvas(10, 10, 400, 400, 400, 400), 4.0, limits)  # not what x4 gives


def test_bicubic_only_tiles_are_the_clients_mistake(tmp_path: Path) -> None:
    """A batch of bicubic 'up' tiles without their LR crops: a 400 that says to send 'lr', and the
    breaker stays closed (the predictor makes each tile's bicubic input from its crop)."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    from serving.errors import BadRequest

    p = make(write_checkpoint(tmp_path / "ckpt", "lr"))
    assert p.load()
    up = InferInput(name="up", shape=[1, 3, 16, 16], datatype="FP32", data=[0.5] * 768)
    geometry = InferInput(name="geometry", shape=[1, 8], datatype="INT64", data=[0, 0, 16, 16, 0, 0, 8, 8])
    request = InferRequest(model_name="hndsr", infer_inputs=[up, geometry], parameters={"scale": 2.0})
    for _ in range(p.settings.breaker_threshold + 1):
        with pytest.raises(BadRequest, match="input 'lr'") as err:
            asyncio.run(p.preprocess(request))
        assert err.value.status == 400
    assert p.breaker.state == BreakerState.CLOSED
