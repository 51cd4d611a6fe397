"""The transformer: a ``kserve.Model`` in front of the predictor.

``preprocess`` validates the request (:mod:`serving.validation`) and decodes the image; ``predict``
tiles it (the core's ``plan_tiles``, tile size chosen per image by :func:`serving.tile_crops.choose_tile`),
forwards batches of LR tile crops to the predictor (:class:`serving.predictor_client.PredictorClient`)
and stitches the answers with the core's Hann-window :class:`hndsr.tiling.Stitcher`; ``postprocess``
encodes PNG or GeoTIFF (:mod:`serving.image_work`: georeferencing kept, pixel size divided by the
scale) and reports scale, model version, tile count, per-stage timings and the cycle-consistency PSNR.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import httpx
import numpy as np
import torch
from kserve import InferRequest, Model

from hndsr.image_read import read_image_bytes
from hndsr.raster import Raster, check_pixel_range, to_unit_float
from hndsr.tiling import Stitcher
from serving.batch_encode import (
    BatchResult,
    TileBatch,
)
from serving.breaker import BreakerState, probed_breaker
from serving.codec import RenderParams, tile_values
from serving.compute import ComputeExecutor
from serving.concurrency import ConcurrencyGate, DrainMeter
from serving.errors import (
    PayloadTooLarge,
    PredictorFailed,
    ServingError,
)
from serving.image_work import ImageWork, PreparedRequest, image_result
from serving.jobs.api import submit_request
from serving.jobs.store import JobStore
from serving.metrics import MODEL_VERSION_KEY, NO_MODEL, ServingMetrics
from serving.middleware import CURRENT_CLIENT, CURRENT_TICKET, REQUEST_STATE
from serving.predictor_client import PredictorClient, breaker_counts
from serving.rate_limit import RateLimiter
from serving.request_stats import RequestStatsRecorder, open_sink
from serving.tile_crops import Canvas, TileSpec, choose_tile, crop, plan
from serving.transformer_response import v2_response, wants_binary_output
from serving.transformer_settings import TransformerSettings
from serving.validation import SRInput, parse_v1, parse_v2, probe_image

logger = logging.getLogger(__name__)


class HNDSRTransformer(Model):
    ready: bool

    def __init__(
        self, name: str, settings: TransformerSettings, metrics: ServingMetrics | None = None
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.metrics = metrics
        self.meter = DrainMeter()
        self.gate = ConcurrencyGate(
            settings.max_concurrency,
            settings.max_queue,
            retry_after_s=settings.retry_after_s,
            what="requests",
            meter=self.meter,
            max_latency_factor=settings.max_latency_factor,
        )
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.client = PredictorClient(
            settings.predictor_host,
            protocol=settings.predictor_protocol,
            model=settings.predictor_model,
            encoding=settings.encoding,
            timeout_s=settings.timeout_s,
        )
        # While the breaker is open, the predictor's readiness decides when it closes (not a timer).
        self.breaker, self.probe = probed_breaker(
            settings.breaker_threshold,
            settings.breaker_reset_s,
            settings.breaker_probe_s,
            name="predictor",
            check=self.client.ready,
        )
        self.model_version = ""
        self.unloaded = False
        # Stitching, cycle PSNR and encoding on one thread (serving.compute: one OpenMP team).
        self.compute = ComputeExecutor(settings.compute_threads)
        self.job_store = JobStore(settings.job_queue) if settings.job_queue is not None else None
        self.request_stats = _request_stats_recorder(settings.request_stats, metrics)
        if metrics is not None:
            metrics.bind(
                queue_depth=lambda: float(self.gate.waiting), breaker_state=lambda: float(self.breaker.state)
            )

    def load(self) -> bool:
        self.ready = True
        self.unloaded = False
        return True

    def reload(self) -> bool:
        return self.load()

    def unload(self) -> None:
        """The model-repository "unload": not ready and not live (a liveness probe restarts the pod)
        until a "load"."""
        self.ready = False
        self.unloaded = True

    def live(self) -> bool:
        return not self.unloaded

    def get_input_types(self) -> list[dict[str, Any]]:
        """One image per v2 request: base64 text (or the file itself in a binary BYTES element);
        scale, steps, seed, strength and output_format travel as request parameters."""
        return [{"name": "image", "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        # "uncertainty" only with samples >= 2 and PNG output (a GeoTIFF carries it as its last band).
        return [
            {"name": "image", "datatype": "BYTES", "shape": [1]},
            {"name": "uncertainty", "datatype": "BYTES", "shape": [1]},
        ]

    async def healthy(self) -> bool:
        # KServe's model readiness gates every request: HALF_OPEN must let its one trial through.
        return self.ready and self.breaker.state is not BreakerState.OPEN

    async def status(self) -> dict[str, Any]:
        """Health including the predictor's readiness (checked live, 2 s timeout). Ready only with the
        breaker CLOSED: the state read here is the one ``hndsr_circuit_breaker_state`` exports."""
        reason = None
        predictor_ready = False
        url = f"{self.client.base_url}/v2/models/{self.settings.predictor_model}/ready"
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                r = await http.get(url)
            predictor_ready = r.status_code == 200
            if not predictor_ready:
                reason = f"predictor model not ready ({r.status_code}: {r.text[:200]})"
        except httpx.HTTPError as exc:
            reason = f"predictor at {self.client.base_url} unreachable ({type(exc).__name__})"
        state = self.breaker.state  # after the live check: a probe may have closed it meanwhile
        if state is not BreakerState.CLOSED:
            self.probe.kick()
            reason = self.breaker.open_message()
        if self.unloaded:
            reason = "the model was unloaded through the model-repository API; load it again"
        ok = self.ready and predictor_ready and state is BreakerState.CLOSED
        return {
            "status": "ready" if ok else "degraded",
            "ready": ok,
            "reason": reason,
            "model": self.name,
            "predictor": self.client.base_url,
            "predictor_protocol": self.settings.predictor_protocol,
            "model_version": self.model_version,
            "circuit_breaker": state.name,
            "inflight": self.gate.active,
            "queue_depth": self.gate.waiting,
            "admission": self.gate.snapshot(),
        }

    def validate(self, payload: Any) -> Any:
        return payload

    # ------------------------------------------------------------------------------ preprocess

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        started = time.perf_counter()
        limits = self.settings.limits
        # The ingress's X-Request-ID (nginx $request_id) names the request end to end: KServe's latency
        # log line, the predictor batches and the v2 response id carry it.
        forwarded_id = (headers or {}).get("x-request-id")
        binary_output = False
        if isinstance(payload, InferRequest):
            protocol, request_id = "v2", str(payload.id or forwarded_id or uuid.uuid4().hex)
            inputs = await asyncio.to_thread(parse_v2, payload, limits)
            binary_output = wants_binary_output(payload)
        else:
            protocol, request_id = "v1", forwarded_id or uuid.uuid4().hex
            inputs = await asyncio.to_thread(parse_v1, payload, limits)
        # Sizes and tile counts of every image from their headers, before decoding any pixels.
        plans = [self._plan(inp) for inp in inputs]
        total = sum(len(specs) for _, _, specs in plans)
        if total > self.settings.max_sync_tiles:
            if self.job_store is not None:  # the asynchronous path: 202 + job ids (serving.jobs.api)
                tiles = [len(specs) for _, _, specs in plans]
                raise await asyncio.to_thread(
                    submit_request,
                    self.job_store,
                    inputs,
                    tiles,
                    headers or {},
                    request_id,
                    CURRENT_CLIENT.get(),
                )
            raise PayloadTooLarge(
                f"this request needs {total} tiles, above the synchronous limit of "
                f"{self.settings.max_sync_tiles}: send a smaller image or a lower scale; this server has "
                "no asynchronous path (its transformer runs without --redis-url, which answers such "
                "requests with 202 and a job id)",
                kind="too_many_tiles",
            )
        ticket = CURRENT_TICKET.get()
        if ticket is not None:  # the admission gate learns the drain rate from sizes and service times
            ticket.plan(
                planned_work(inputs, plans), tuple((inp.params.steps, inp.params.strength) for inp in inputs)
            )
        images = []
        for inp, (canvas, tile, specs) in zip(inputs, plans, strict=True):
            t0 = time.perf_counter()
            raster = await asyncio.to_thread(self._decode, inp)
            if (raster.height, raster.width) != (canvas.lr_h, canvas.lr_w):  # header and pixels disagree
                canvas, tile, specs = self._plan_size(raster.height, raster.width, inp.params.scale)
            work = ImageWork(inp=inp, raster=raster, canvas=canvas, tile=tile, specs=specs)
            work.timings_ms["decode"] = (time.perf_counter() - t0) * 1000.0
            images.append(work)
            if self.request_stats is not None:  # non-blocking; drops are counted, never raised
                self.request_stats.offer(raster, scale=inp.params.scale, steps=inp.params.steps)
        return PreparedRequest(protocol, request_id, images, started, binary_output)

    def _tile(self, canvas: Canvas) -> int:
        s = self.settings
        if not s.adaptive_tile:
            return s.tile
        return choose_tile(
            canvas.canvas_h, canvas.canvas_w, max_tile=s.tile, overlap=s.overlap, halo=s.halo, align=s.align
        )

    def _plan(self, inp: SRInput) -> tuple[Canvas, int, list[TileSpec]]:
        header = probe_image(inp.data, inp.where or f"instances[{inp.index}]", self.settings.limits)
        return self._plan_size(header.height, header.width, inp.params.scale)

    def _plan_size(self, lr_h: int, lr_w: int, scale: float) -> tuple[Canvas, int, list[TileSpec]]:
        canvas = Canvas.for_scale(lr_h, lr_w, scale, self.settings.align)
        tile = self._tile(canvas)
        specs = plan(
            canvas,
            tile=tile,
            overlap=self.settings.overlap,
            halo=self.settings.halo,
            align=self.settings.align,
        )
        return canvas, tile, specs

    def _decode(self, inp: SRInput) -> Raster:
        where = inp.where or f"instances[{inp.index}]"
        raster = read_image_bytes(inp.data, max_pixels=self.settings.limits.max_input_pixels, name=where)
        rgb = raster.rgb()  # InputError (422) for fewer than 3 bands
        check_pixel_range(rgb, where)  # ValueRangeError (422): non-finite, or float values outside [0, 1]
        return raster

    # ------------------------------------------------------------------------------ predict

    async def predict(
        self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> Any:
        prepared: PreparedRequest = payload
        ticket = CURRENT_TICKET.get()
        total = sum(len(work.specs) for work in prepared.images)
        done = 0

        def progress(tiles: int) -> None:
            nonlocal done
            done += tiles
            if ticket is not None and total:
                ticket.progress(0.9 * done / total)  # encoding follows the last tile

        for work in prepared.images:
            await self._upscale_image(work, prepared.request_id, progress)
        return prepared

    async def _upscale_image(self, work: ImageWork, request_id: str, progress: Any = None) -> None:
        s = self.settings
        p = work.inp.params
        params = RenderParams(
            scale=p.scale, steps=p.steps, seed=p.seed, strength=p.strength, samples=p.samples
        )
        rgb = work.raster.rgb()
        lr = torch.from_numpy(rgb)
        # 8-bit sources travel as their 8-bit values (a quarter of the float32 bytes), bit-exact.
        lr_dtype = "uint8" if work.raster.dtype == "uint8" and _holds_8bit_values(rgb) else "float32"
        c = work.canvas
        # R, G, B (and the draws' spread with samples >= 2, blended across tiles like the pixels).
        stitcher = Stitcher(params.channels, c.canvas_h, c.canvas_w, overlap=s.overlap, halo=s.halo)
        batches = [work.specs[i : i + s.batch_size] for i in range(0, len(work.specs), s.batch_size)]
        # One tile is the whole canvas (no blending follows): an 8-bit image can travel as its 8-bit
        # output pixels, half the bytes of the uint16 tiles that blending needs.
        bits = 8 if len(work.specs) == 1 and work.raster.dtype == "uint8" and p.samples == 1 else 16
        inflight = asyncio.Semaphore(max(1, s.inflight_batches))

        async def send(specs: list[TileSpec], index: int) -> BatchResult:
            async with inflight:
                crops = [crop(lr, spec).numpy() for spec in specs]
                batch = TileBatch(
                    canvas=c,
                    specs=specs,
                    crops=crops,
                    params=params,
                    request_id=f"{request_id}-{index}",
                    tile_bits=bits,
                    lr_dtype=lr_dtype,
                )
                return await self.client.infer(batch)

        self.breaker.allow()
        started = time.perf_counter()
        stitch_s = 0.0
        tasks = [asyncio.create_task(send(b, i)) for i, b in enumerate(batches)]
        try:
            for specs, task in zip(batches, tasks, strict=True):
                result = await task  # in tile order: the stitched sum is deterministic
                if result.sr.shape[0] != len(specs):
                    raise PredictorFailed(
                        f"the predictor returned {result.sr.shape[0]} tiles for a batch of {len(specs)}"
                    )
                if result.sr.ndim != 4 or result.sr.shape[1] != params.channels:
                    raise PredictorFailed(
                        f"the predictor returned tiles of shape {list(result.sr.shape[1:])}, not "
                        f"{params.channels} channels (samples {p.samples}): is it older than the transformer?"
                    )
                if result.sr.dtype == np.uint8:  # asked for with bits == 8: these are the output pixels
                    work.pixels = result.sr[0][:, : c.out_h, : c.out_w]
                t0 = time.perf_counter()
                await self.compute.run(_stitch, stitcher, specs, result.sr)
                stitch_s += time.perf_counter() - t0
                work.model_ms += result.model_ms
                work.model_version = result.model_version or work.model_version
                work.checkpoint_sha256 = result.checkpoint_sha256 or work.checkpoint_sha256
                work.steps = result.steps if result.steps is not None else work.steps
                if progress is not None:
                    progress(len(specs))
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Only the predictor's failures count; a bug here or a cancelled request says nothing about it.
            if isinstance(exc, ServingError) and breaker_counts(exc):
                self.breaker.failure(exc.message)
            else:
                self.breaker.release()
            raise
        self.breaker.success()
        self.model_version = work.model_version or self.model_version
        t0 = time.perf_counter()
        work.sr = await self.compute.run(lambda: stitcher.result()[:, : c.out_h, : c.out_w].clamp_(0.0, 1.0))
        stitch_s += time.perf_counter() - t0
        work.timings_ms["predict"] = (time.perf_counter() - started) * 1000.0 - stitch_s * 1000.0
        work.timings_ms["model"] = work.model_ms
        work.timings_ms["stitch"] = stitch_s * 1000.0

    # ------------------------------------------------------------------------------ postprocess

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> Any:
        prepared: PreparedRequest = result
        outputs = [
            await self.compute.run(image_result, work, self.settings.png_compress_level)
            for work in prepared.images
        ]
        total_ms = (time.perf_counter() - prepared.started) * 1000.0
        for out in outputs:
            out["timings_ms"]["total"] = round(total_ms, 2)
        logger.info("request %s: %d image(s) in %.0f ms", prepared.request_id, len(outputs), total_ms)
        versions = {work.model_version or NO_MODEL for work in prepared.images}
        version = versions.pop() if len(versions) == 1 else "mixed"
        state = REQUEST_STATE.get()
        if state is not None:  # the metrics middleware labels this request's count with it
            state[MODEL_VERSION_KEY] = version
        if self.metrics is not None:
            self.metrics.observe(total_ms / 1000.0, sum(o["tiles"] for o in outputs), version)
            for work, out in zip(prepared.images, outputs, strict=True):
                self.metrics.add_psnr(out["cycle_psnr_db"], work.model_version or NO_MODEL)
                if "uncertainty_mean" in out:
                    self.metrics.add_uncertainty(out["uncertainty_mean"], work.model_version or NO_MODEL)
        if prepared.protocol == "v1":
            return {"predictions": outputs}
        return v2_response(outputs[0], prepared.request_id, self.name, prepared.binary_output)


def planned_work(inputs: list[SRInput], plans: list[tuple[Canvas, int, list[TileSpec]]]) -> float:
    """A request's work for admission: output tile megapixels, K samples counting K times (each tile
    is rendered K times); the cost class (steps, strength) prices a megapixel of one draw."""
    return (
        sum(
            inp.params.samples * len(specs) * tile * tile
            for inp, (_, tile, specs) in zip(inputs, plans, strict=True)
        )
        / 1e6
    )


def _request_stats_recorder(
    target: str | None, metrics: ServingMetrics | None
) -> RequestStatsRecorder | None:
    if not target:
        return None
    return RequestStatsRecorder(open_sink(target), on_drop=metrics.stats_dropped if metrics else None)


def _holds_8bit_values(rgb: np.ndarray) -> bool:
    """Reading the 8-bit values back (the reader's conversion) gives exactly these floats."""
    levels = np.rint(rgb * np.float32(255)).astype(np.uint8)
    return bool(np.array_equal(to_unit_float(levels, "rgb"), rgb))


def _stitch(stitcher: Stitcher, specs: list[TileSpec], sr: np.ndarray) -> None:
    for spec, tile in zip(specs, sr, strict=True):
        stitcher.add(spec.tile, torch.from_numpy(tile_values(tile)))
