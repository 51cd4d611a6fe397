"""The predictor: a ``kserve.Model`` that runs batches of tiles through the HNDSR model.

Lifecycle: ``load()`` resolves the storage URI (:mod:`serving.storage`), loads and hash-verifies the
checkpoint, moves it to the device and runs a warm-up inference whose output must pass the same
checks as every batch. Only then is the model ready. Any failure leaves it **not ready** with the
reason in the log, on ``GET /health`` and in 503 answers — never a silent fallback to bicubic.

Per batch: at most ``max_concurrency`` inferences run at once (more wait, up to ``max_queue``, then
503); a circuit breaker fails fast (503) after ``breaker_threshold`` consecutive inference failures
and lets one trial through after ``breaker_reset_s``; every output is checked (finite, in range, not
degenerate) and a failed check is a 500 the client sees and a failure for the breaker.

CUDA when present (fp16 autocast by default), CPU otherwise (bf16 autocast where the CPU computes it
natively): the precision is chosen by the core's ``autocast_dtype``, as for ``hndsr upscale``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model

from hndsr.checkpoint import checkpoint_version, load_checkpoint
from hndsr.errors import CheckpointError, HNDSRError, OutputValidationError
from hndsr.model_pass import (
    autocast_dtype,
    mean_and_spread,
    pick_device,
    render_batch,
    sample_seeds,
    slice_noise,
)
from hndsr.models.hndsr_model import HNDSR
from hndsr.models.operator import LRInput
from hndsr.resample import resize
from serving.batch_decode import (
    BatchLimits,
    DecodedBatch,
    decode_v1_request,
    decode_v2_request,
    encode_v1_response,
)
from serving.batch_params import check_render_samples
from serving.breaker import BreakerState, probed_breaker
from serving.codec import quantise_tiles
from serving.compute import ComputeExecutor
from serving.concurrency import ConcurrencyGate
from serving.errors import (
    InferenceFailed,
    NotReady,
    OutputCheckFailed,
    ServingError,
    Unprocessable,
)
from serving.metrics import ServingMetrics
from serving.noise_cache import NoiseCache
from serving.output_checks import check_output, warmup_lr
from serving.storage import resolve_storage_uri
from serving.tile_crops import model_inputs

logger = logging.getLogger(__name__)


@dataclass
class PredictorSettings:
    storage_uri: str = "release"
    device: str | None = None  # None: cuda when present
    half: bool | None = None  # None: fp16 autocast on CUDA only
    max_concurrency: int = 4
    max_queue: int = 20
    breaker_threshold: int = 3
    breaker_reset_s: float = 30.0  # OPEN -> one blind trial, when the self-test has not closed it first
    breaker_probe_s: float = 1.0  # while OPEN, re-run the warm-up self-test this often; passed -> CLOSED
    max_batch: int = 16
    max_tile: int = 1024
    compute_batch: int | None = None  # tiles per model call; None: 4 on CUDA, 1 on CPU (faster there)
    sharpness_floor: float = 0.25
    expected_sha256: str | None = None
    cache_dir: str | None = None
    max_body_bytes: int = 64 * 2**20  # the transformer sends ~3 MB per batch of 4 tiles (b64 crops)
    max_canvas_pixels: int = 72_000_000  # 2048 x 2048 px at x4 is 67 MP (serving.batch_decode.BatchLimits)
    noise_cache_bytes: int = 256 * 2**20  # diffusion noise fields kept between batches of one image


class HNDSRPredictor(Model):
    ready: bool

    def __init__(self, name: str, settings: PredictorSettings, metrics: ServingMetrics | None = None) -> None:
        super().__init__(name)
        self.settings = settings
        self.metrics = metrics
        # While open, the warm-up inference (with its output checks) decides when the device is back.
        self.breaker, self.probe = probed_breaker(
            settings.breaker_threshold,
            settings.breaker_reset_s,
            settings.breaker_probe_s,
            name="inference",
            check=self._self_test,
        )
        self.gate = ConcurrencyGate(settings.max_concurrency, settings.max_queue, what="inferences")
        self.model: HNDSR | None = None
        self.device = pick_device(settings.device)
        self.half = (
            (self.device.type == "cuda")
            if settings.half is None
            else (settings.half and self.device.type == "cuda")
        )
        self.autocast_dtype = autocast_dtype(self.device, half=self.half)
        self.model_version = ""
        self.checkpoint_sha256 = ""
        self.load_error: str | None = None
        self.limits = BatchLimits(
            max_batch=settings.max_batch,
            max_tile=settings.max_tile,
            max_canvas_pixels=settings.max_canvas_pixels,
        )
        default_batch = 4 if self.device.type == "cuda" else 1
        self.compute_batch = max(1, settings.compute_batch or default_batch)
        self.noise = NoiseCache(settings.noise_cache_bytes)
        self.unloaded = False  # set by the model-repository "unload": the server is no longer live
        # All tensor work on one thread on CPU (serving.compute); a GPU takes the concurrent inferences.
        self.compute = ComputeExecutor(settings.max_concurrency if self.device.type == "cuda" else 1)
        if metrics is not None:
            metrics.bind(
                queue_depth=lambda: float(self.gate.waiting),
                breaker_state=lambda: float(self.breaker.state),
                vram=self._vram,
                model_version=lambda: self.model_version,
            )

    # ------------------------------------------------------------------------------ lifecycle

    def load(self) -> bool:
        if self.model is not None and self.ready:
            return True
        return self.reload()

    def reload(self) -> bool:
        """Load the checkpoint from storage again — resolved, sha256-verified (and checked against
        ``expected_sha256``), moved to the device and warmed up — and swap it in. On failure a model
        that is serving keeps serving (the error is returned in ``load_error``); without one the
        server stays not ready with the reason."""
        try:
            model, config, sha = self._load_checkpoint()
        except Exception as exc:  # every failure keeps the model not ready, loudly
            self.load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, HNDSRError) else str(exc)
            logger.error("model %s NOT READY (load failed): %s", self.name, self.load_error)
            if self.metrics is not None:
                self.metrics.error("load_failed")
            if self.model is None:
                self.ready = False
            return False
        self.model = model
        self.checkpoint_sha256 = sha
        self.model_version = checkpoint_version(config)
        self.load_error = None
        self.unloaded = False
        self.ready = True
        logger.info(
            "model %s ready: %s (sha256 %s) on %s%s",
            self.name,
            self.model_version,
            sha[:12],
            self.device,
            f" {self.autocast_dtype}" if self.autocast_dtype else " fp32",
        )
        return True

    def _load_checkpoint(self) -> tuple[HNDSR, dict[str, Any], str]:
        directory = resolve_storage_uri(self.settings.storage_uri, cache_dir=self.settings.cache_dir)
        model, config = self.compute.call(load_checkpoint, directory)  # verifies the weights' sha256
        sha = str(config.get("sha256", ""))
        expected = self.settings.expected_sha256
        if expected and sha != expected:
            raise CheckpointError(
                f"checkpoint {self.settings.storage_uri} has sha256 {sha}, the deployment pins "
                f"{expected}: "
                "deploy the pinned checkpoint or update the pin"
            )
        model = self.compute.call(lambda: model.to(self.device).eval())
        self.compute.call(self._warmup, model)
        return model, config, sha

    def unload(self) -> None:
        """The model-repository "unload": drop the weights. The server is then neither ready nor live
        (a liveness probe restarts the pod) until a "load" brings the model back."""
        self.ready = False
        self.unloaded = True
        self.model = None
        self.load_error = "the model was unloaded through the model-repository API; load it again"
        self.noise.clear()
        logger.warning("model %s unloaded", self.name)

    def live(self) -> bool:
        """Liveness: false once the model is gone (unloaded), so that a probe restarts the server."""
        return not self.unloaded

    def get_input_types(self) -> list[dict[str, Any]]:
        """The tensors of a tile batch (serving.codec): ``lr`` LR crops — FP32 ``[B, 3, rows, cols]``
        or BYTES ``[B]`` (base64 little-endian float32/uint8, see ``lr_dtype``); ``geometry`` INT64
        ``[B, 8]``; canvas and render settings
        travel as request parameters."""
        return [
            {"name": "lr", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
            {"name": "geometry", "datatype": "INT64", "shape": [-1, 8]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        # 4 channels (R, G, B, uncertainty) when the batch asks for samples >= 2 (serving.codec).
        return [{"name": "sr", "datatype": "UINT16", "shape": [-1, -1, -1, -1]}]

    def _warmup(self, model: HNDSR) -> None:
        lr = warmup_lr().to(self.device)
        up = resize(lr, (128, 128)).unsqueeze(0)
        low = [LRInput.whole(lr[None], (128, 128))] if model.needs_lr else None
        sr = render_batch(model, up, 4.0, steps=0, strength=1.0, lr=low, dtype=self.autocast_dtype)
        try:
            check_output(sr, up, floor=self.settings.sharpness_floor)
        except OutputValidationError as exc:
            raise CheckpointError(f"warm-up inference failed its output checks: {exc}") from exc

    async def _self_test(self) -> bool:
        """The breaker's probe: the warm-up inference passes its output checks on the device."""
        model = self.model
        if not self.ready or model is None:
            return False
        await self.compute.run(self._warmup, model)
        return True

    async def healthy(self) -> bool:
        return self.ready and self.model is not None and self.breaker.state is not BreakerState.OPEN

    def status(self) -> dict[str, Any]:
        state = self.breaker.state
        if not self.ready:
            status, reason = (
                ("failed", self.load_error) if self.load_error else ("loading", "model not loaded yet")
            )
        elif state is not BreakerState.CLOSED:  # as hndsr_circuit_breaker_state says
            status, reason = "degraded", self.breaker.open_message()
        else:
            status, reason = "ready", None
        return {
            "status": status,
            "ready": status == "ready",
            "reason": reason,
            "model": self.name,
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "storage_uri": self.settings.storage_uri,
            "device": str(self.device),
            "fp16": self.half,
            "precision": str(self.autocast_dtype or torch.float32).removeprefix("torch."),
            "compute_batch": self.compute_batch,
            "circuit_breaker": state.name,
            "inflight": self.gate.active,
            "queue_depth": self.gate.waiting,
        }

    def _vram(self) -> float:
        if self.device.type == "cuda" and torch.cuda.is_available():
            return float(torch.cuda.memory_allocated(self.device))
        return 0.0

    # ------------------------------------------------------------------------------ request path

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess already produced a validated DecodedBatch

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            batch = await self.compute.run(decode_v2_request, payload, self.limits)
            return ("v2", batch)
        batch = await self.compute.run(decode_v1_request, payload, self.limits)
        return ("v1", batch)

    async def predict(
        self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> Any:
        protocol, batch = payload
        if not self.ready or self.model is None:
            raise NotReady(
                f"model {self.name} is not ready: {self.load_error or 'still loading'}", retry_after=10.0
            )
        async with self.gate.slot():
            self.breaker.allow()
            try:
                sr, model_ms, steps = await self.compute.run(self._infer, batch)
            except ServingError as exc:
                if exc.status >= 500 and not exc.breaker_neutral:
                    self.breaker.failure(exc.message)
                else:
                    self.breaker.release()
                raise
            except OutputValidationError as exc:
                raise await self._output_check_failed(exc) from exc
            except Exception as exc:  # OOM, device and other runtime errors of the model
                self.breaker.failure(f"{type(exc).__name__}: {exc}")
                logger.exception("inference failed")
                raise InferenceFailed(
                    f"inference failed ({type(exc).__name__}: {str(exc)[:300]}); retry later — repeated "
                    "failures "
                    "open the circuit breaker"
                ) from exc
            self.breaker.success()
        if self.metrics is not None:
            self.metrics.observe(model_ms / 1000.0, len(batch.specs))
        return protocol, batch, sr, model_ms, steps

    async def _output_check_failed(self, exc: OutputValidationError) -> ServingError:
        """Whose failure is it? The model runs its warm-up tile again (the self-check it passed at load):
        if that still passes, the model is healthy and this input is what it cannot handle — the
        client's problem (422), which must not open the breaker for everyone; if the self-check fails
        too, the model or device broke: a 500 that counts against the breaker."""
        model = self.model
        try:
            if model is None:
                raise CheckpointError("the model was unloaded")
            await self.compute.run(self._warmup, model)
        except Exception as check_exc:
            self.breaker.failure(str(exc))
            logger.error("output check failed and the self-check failed too: %s / %s", exc, check_exc)
            return OutputCheckFailed(
                f"output check failed: {exc}; the model's self-check fails too: {check_exc}"
            )
        self.breaker.release()
        return Unprocessable(
            f"the model's output for this input failed its checks ({exc}) while the model passes its "
            "self-check: the input is outside what the model can process (check its values and content)",
            kind="image_not_processable",
        )

    def _infer(self, batch: DecodedBatch) -> tuple[np.ndarray, float, int]:
        model = self.model
        if model is None:  # unloaded while this request waited
            raise NotReady(f"model {self.name} is not loaded: {self.load_error}", retry_after=10.0)
        started = time.perf_counter()
        p = batch.params
        up, lows = model_inputs(batch.crops, batch.specs, batch.canvas)
        up = up.to(self.device)
        steps = model.default_steps if p.steps is None else p.steps
        check_render_samples(p.samples, steps)  # the model's default steps may be 0: a 422, not counted
        strength = model.default_strength if p.strength is None else p.strength
        tiles = [spec.tile for spec in batch.specs]
        low_inputs = [low.to(self.device) for low in lows] if model.needs_lr else None

        def draw(seed: int) -> torch.Tensor:
            noise = None
            if steps > 0:
                f = model.factor
                field = self.noise.get(
                    seed, model.latent_channels, batch.canvas.canvas_h // f, batch.canvas.canvas_w // f
                )
                noise = slice_noise(field, tiles, f).to(self.device)
            sr = render_batch(
                model,
                up,
                float(p.scale),
                steps=steps,
                strength=strength,
                initial_noise=noise,
                lr=low_inputs,
                micro_batch=self.compute_batch,  # the batch that travelled, split as the device runs best
                dtype=self.autocast_dtype,
            )
            return check_output(sr, up, floor=self.settings.sharpness_floor)

        if p.samples > 1:  # every draw checked; the mean as R, G, B and the spread as a fourth channel
            sr = mean_and_spread(torch.stack([draw(seed) for seed in sample_seeds(p.seed, p.samples)]))
        else:
            sr = draw(p.seed)
        out = quantise_tiles(sr.cpu().numpy().astype(np.float32, copy=False), batch.tile_bits)
        return out, (time.perf_counter() - started) * 1000.0, steps

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> Any:
        protocol, batch, sr, model_ms, steps = result
        if protocol == "v1":
            return await asyncio.to_thread(
                encode_v1_response, sr, self.model_version, model_ms, steps, self.checkpoint_sha256
            )
        out = InferOutput(
            name="sr", shape=list(sr.shape), datatype="UINT8" if sr.dtype == np.uint8 else "UINT16"
        )
        if batch.binary_output:
            out.set_data_from_numpy(sr, binary_data=True)
        else:
            out.set_data_from_numpy(sr, binary_data=False)
        return InferResponse(
            response_id=batch.request_id,
            model_name=self.name,
            infer_outputs=[out],
            model_version=self.model_version,
            parameters={
                "model_version": self.model_version,
                "checkpoint_sha256": self.checkpoint_sha256,
                "model_ms": round(model_ms, 3),
                "tiles": len(batch.specs),
                "steps": steps,
            },
            use_binary_outputs=batch.binary_output,
        )
