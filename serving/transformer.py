"""The transformer: a ``kserve.Model`` in front of the predictor.

``preprocess`` validates the request (:mod:`serving.validation`) and decodes the image; ``predict``
tiles it (the core's ``plan_tiles``, tile size chosen per image by :func:`serving.tile_crops.choose_tile`),
forwards batches of LR tile crops to the predictor (:class:`PredictorClient`) and stitches the
answers with the core's Hann-window :class:`hndsr.tiling.Stitcher`; ``postprocess`` encodes PNG or
GeoTIFF (georeferencing kept, pixel size divided by the scale) and reports scale, model version, tile
count, per-stage timings and the cycle-consistency PSNR.

``predict`` talks to the predictor through its own HTTP client rather than KServe's: in this KServe
version the stock client decodes every tensor of the answer into a Python list, and its binary v2 hop
sends conflicting content types (400). The wire format is in :mod:`serving.codec`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model

from hndsr.image_read import read_image_bytes
from hndsr.image_write import encode_image, png_bytes
from hndsr.inference import sr_raster
from hndsr.raster import Raster, check_pixel_range, to_unit_float
from hndsr.resample import resize
from hndsr.tiling import Stitcher
from serving.batch_encode import (
    BatchResult,
    TileBatch,
    decode_v1_response,
    decode_v2_response,
    encode_v1,
    encode_v2,
)
from serving.breaker import BreakerState, probed_breaker
from serving.codec import RenderParams, tile_values
from serving.compute import ComputeExecutor
from serving.concurrency import ConcurrencyGate, DrainMeter
from serving.errors import (
    OutputCheckFailed,
    PayloadTooLarge,
    PredictorFailed,
    PredictorTimeout,
    PredictorUnavailable,
    ServingError,
    Unavailable,
    Unprocessable,
)
from serving.jobs.api import submit_request
from serving.jobs.store import JobConfig, JobStore
from serving.metrics import MODEL_VERSION_KEY, NO_MODEL, ServingMetrics
from serving.middleware import CURRENT_CLIENT, CURRENT_TICKET, REQUEST_STATE
from serving.rate_limit import RateLimiter
from serving.request_stats import RequestStatsRecorder, open_sink
from serving.tile_crops import Canvas, TileSpec, choose_tile, crop, plan
from serving.validation import Limits, SRInput, parse_v1, parse_v2, probe_image

logger = logging.getLogger(__name__)


@dataclass
class TransformerSettings:
    predictor_host: str = "127.0.0.1:8080"
    predictor_protocol: str = "v2"  # v1 | v2
    predictor_model: str = "hndsr"
    encoding: str = "b64"  # the v2 tile encoding (serving.codec.ENCODINGS)
    timeout_s: float = 600.0
    limits: Limits = field(default_factory=Limits)
    max_sync_tiles: int = 64
    tile: int = 1024  # output px, upper bound (256 LR px at x4); shrunk per image by choose_tile
    adaptive_tile: bool = True
    overlap: int = 32
    halo: int = 32
    align: int = 4  # the model's latent factor
    batch_size: int = 4  # tiles per predictor request
    inflight_batches: int = 2  # predictor requests in flight per image
    rate_limit_rps: float = 10.0  # per client key; <= 0 disables
    rate_limit_burst: int = 20
    api_keys_file: str | None = None  # issued keys -> client names: the rate-limit identity (else the peer)
    client_ip_header: str | None = None  # e.g. X-Forwarded-For from a trusted proxy in front
    trusted_proxies: str = "127.0.0.1/32,::1/128"  # peers whose client_ip_header is believed
    max_concurrency: int = 4  # requests processed at once
    max_queue: int = 20  # requests waiting for a slot; more -> 503
    # Refuse (503 queue_full) a request whose expected latency at the measured drain rate, calibrated to
    # the tail (serving.concurrency.ConcurrencyGate), would be over this many times its unloaded latency;
    # <= 0: only max_queue bounds admission.
    max_latency_factor: float = 2.5
    breaker_threshold: int = 3
    breaker_reset_s: float = 30.0  # OPEN -> one blind trial, when the readiness probe has not closed it
    breaker_probe_s: float = 1.0  # while OPEN, ask the predictor's readiness this often; ready -> CLOSED
    retry_after_s: float = 1.0
    compute_threads: int = 1  # threads for tensor work (serving.compute); more only with cores to spare
    png_compress_level: int = 1  # deflate level of PNG outputs (0-9); 1-3 use ISA-L: ~6x faster than zlib
    request_stats: str | None = None  # DIR | s3://bucket/prefix: per-request image statistics (drift)
    jobs: JobConfig | None = None  # set: requests above max_sync_tiles become jobs (202, serving.jobs)


@dataclass
class Job:
    """One image of a request, from validation to the encoded output."""

    inp: SRInput
    raster: Raster
    canvas: Canvas
    tile: int
    specs: list[TileSpec]
    timings_ms: dict[str, float] = field(default_factory=dict)
    sr: torch.Tensor | None = None
    model_version: str = ""
    model_ms: float = 0.0
    steps: int | None = None
    pixels: np.ndarray | None = None  # the final uint8 pixels, when one 8-bit tile is the output


@dataclass
class Prepared:
    protocol: str
    request_id: str
    jobs: list[Job]
    started: float
    binary_output: bool = False  # v2: the client asked for the binary tensor extension in the answer


class PredictorClient:
    """Async HTTP client for tile batches; maps every failure to a typed :mod:`serving.errors` error."""

    def __init__(self, host: str, *, protocol: str, model: str, encoding: str, timeout_s: float) -> None:
        self.base_url = host if host.startswith(("http://", "https://")) else f"http://{host}"
        self.protocol = protocol
        self.model = model
        self.encoding = encoding
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        if self.protocol == "v1":
            return f"{self.base_url}/v1/models/{self.model}:predict"
        return f"{self.base_url}/v2/models/{self.model}/infer"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                transport=httpx.AsyncHTTPTransport(retries=1),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ready(self) -> bool:
        """The predictor's model readiness (its own breaker included), False when unreachable."""
        try:
            r = await self._http().get(f"{self.base_url}/v2/models/{self.model}/ready", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def infer(self, batch: TileBatch) -> BatchResult:
        if self.protocol == "v1":
            body, headers = encode_v1(batch)
        else:
            body, headers = encode_v2(batch, self.encoding)
        try:
            response = await self._http().post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise PredictorTimeout(
                f"the predictor at {self.base_url} did not answer within {self.timeout_s:g} s; retry with a "
                "smaller image or fewer steps"
            ) from exc
        except httpx.HTTPError as exc:  # connect refused, reset, protocol errors: the predictor is gone
            raise PredictorUnavailable(
                f"the predictor at {self.base_url} is unreachable ({type(exc).__name__}); retry shortly",
                retry_after=2.0,
            ) from exc
        if response.status_code != 200:
            raise self._error(response)
        if self.protocol == "v1":
            return decode_v1_response(response.content)
        return decode_v2_response(response.content, response.headers)

    def _error(self, response: httpx.Response) -> ServingError:
        try:
            doc = orjson.loads(response.content)
            message, kind = str(doc.get("error", "")), str(doc.get("kind", ""))
        except (orjson.JSONDecodeError, AttributeError):
            message, kind = response.text[:300], ""
        code = response.status_code
        if code == 503:
            retry = _retry_after(response.headers.get("retry-after"))
            return Unavailable(
                f"predictor unavailable: {message}", retry_after=retry, kind=kind or "predictor_unavailable"
            )
        if code == 500 and kind == "output_check":
            return OutputCheckFailed(message)
        if code == 413:
            return PayloadTooLarge(f"the predictor refused the tile batch as too large: {message}")
        if code == 422:  # the values the client sent (e.g. image_not_processable): the client's to fix
            return Unprocessable(message, kind=kind or "unprocessable")
        err = PredictorFailed(f"the predictor answered {code}: {message}", kind="predictor_error")
        if code < 500:  # it answered, so it is up: a refused batch says nothing about its health
            err.breaker_neutral = True
        return err


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _breaker_counts(err: ServingError) -> bool:
    """Failures that say the predictor is unhealthy (not: it is busy, or the input was refused)."""
    if err.kind == "queue_full" or err.breaker_neutral:
        return False
    return err.status >= 500


def cycle_psnr(lr: torch.Tensor, sr: torch.Tensor, window: int = 96) -> float:
    """PSNR (dB) of the output downsampled back to the input size against the input, on a central
    window of at most ``window`` x ``window`` input pixels (exactly that window of the whole
    downsample: the resampler computes a window from the rows/cols it needs only)."""
    h, w = lr.shape[-2], lr.shape[-1]
    y0, x0 = max(0, (h - window) // 2), max(0, (w - window) // 2)
    rows, cols = slice(y0, min(h, y0 + window)), slice(x0, min(w, x0 + window))
    back = resize(sr, (h, w), antialias=True, rows=rows, cols=cols).clamp(0.0, 1.0)
    mse = float(torch.mean((back - lr[:, rows, cols]) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(1.0 / mse)


def encode_output(raster: Raster, fmt: str, png_level: int) -> bytes:
    """PNG (zlib level ``png_level``: encoding is the largest serving cost after the model) or
    GeoTIFF with georeferencing, through the core's writer."""
    return encode_image(raster, "png" if fmt == "png" else "geotiff", png_level=png_level)


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
        self.jobs = JobStore(settings.jobs) if settings.jobs is not None else None
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
        return [{"name": "image", "datatype": "BYTES", "shape": [1]}]

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
            if self.jobs is not None:  # the asynchronous path: 202 + job ids (serving.jobs.api)
                tiles = [len(specs) for _, _, specs in plans]
                raise await asyncio.to_thread(
                    submit_request, self.jobs, inputs, tiles, headers or {}, request_id, CURRENT_CLIENT.get()
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
                sum(len(specs) * tile * tile for _, tile, specs in plans) / 1e6,
                tuple((inp.params.steps, inp.params.strength) for inp in inputs),
            )
        jobs = []
        for inp, (canvas, tile, specs) in zip(inputs, plans, strict=True):
            t0 = time.perf_counter()
            raster = await asyncio.to_thread(self._decode, inp)
            if (raster.height, raster.width) != (canvas.lr_h, canvas.lr_w):  # header and pixels disagree
                canvas, tile, specs = self._plan_size(raster.height, raster.width, inp.params.scale)
            job = Job(inp=inp, raster=raster, canvas=canvas, tile=tile, specs=specs)
            job.timings_ms["decode"] = (time.perf_counter() - t0) * 1000.0
            jobs.append(job)
            if self.request_stats is not None:  # non-blocking; drops are counted, never raised
                self.request_stats.offer(raster, scale=inp.params.scale, steps=inp.params.steps)
        return Prepared(protocol, request_id, jobs, started, binary_output)

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
        prepared: Prepared = payload
        ticket = CURRENT_TICKET.get()
        total = sum(len(job.specs) for job in prepared.jobs)
        done = 0

        def progress(tiles: int) -> None:
            nonlocal done
            done += tiles
            if ticket is not None and total:
                ticket.progress(0.9 * done / total)  # encoding follows the last tile

        for job in prepared.jobs:
            await self._run_job(job, prepared.request_id, progress)
        return prepared

    async def _run_job(self, job: Job, request_id: str, progress: Any = None) -> None:
        s = self.settings
        p = job.inp.params
        params = RenderParams(scale=p.scale, steps=p.steps, seed=p.seed, strength=p.strength)
        rgb = job.raster.rgb()
        lr = torch.from_numpy(rgb)
        # 8-bit sources travel as their 8-bit values (a quarter of the float32 bytes), bit-exact.
        lr_dtype = "uint8" if job.raster.dtype == "uint8" and _holds_8bit_values(rgb) else "float32"
        c = job.canvas
        stitcher = Stitcher(3, c.canvas_h, c.canvas_w, overlap=s.overlap, halo=s.halo)
        batches = [job.specs[i : i + s.batch_size] for i in range(0, len(job.specs), s.batch_size)]
        # One tile is the whole canvas (no blending follows): an 8-bit image can travel as its 8-bit
        # output pixels, half the bytes of the uint16 tiles that blending needs.
        bits = 8 if len(job.specs) == 1 and job.raster.dtype == "uint8" else 16
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
                if result.sr.dtype == np.uint8:  # asked for with bits == 8: these are the output pixels
                    job.pixels = result.sr[0][:, : c.out_h, : c.out_w]
                t0 = time.perf_counter()
                await self.compute.run(_stitch, stitcher, specs, result.sr)
                stitch_s += time.perf_counter() - t0
                job.model_ms += result.model_ms
                job.model_version = result.model_version or job.model_version
                job.steps = result.steps if result.steps is not None else job.steps
                if progress is not None:
                    progress(len(specs))
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Only the predictor's failures count; a bug here or a cancelled request says nothing about it.
            if isinstance(exc, ServingError) and _breaker_counts(exc):
                self.breaker.failure(exc.message)
            else:
                self.breaker.release()
            raise
        self.breaker.success()
        self.model_version = job.model_version or self.model_version
        t0 = time.perf_counter()
        job.sr = await self.compute.run(lambda: stitcher.result()[:, : c.out_h, : c.out_w].clamp_(0.0, 1.0))
        stitch_s += time.perf_counter() - t0
        job.timings_ms["predict"] = (time.perf_counter() - started) * 1000.0 - stitch_s * 1000.0
        job.timings_ms["model"] = job.model_ms
        job.timings_ms["stitch"] = stitch_s * 1000.0

    # ------------------------------------------------------------------------------ postprocess

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> Any:
        prepared: Prepared = result
        outputs = [await self.compute.run(self._finish, job) for job in prepared.jobs]
        total_ms = (time.perf_counter() - prepared.started) * 1000.0
        for out in outputs:
            out["timings_ms"]["total"] = round(total_ms, 2)
        logger.info("request %s: %d image(s) in %.0f ms", prepared.request_id, len(outputs), total_ms)
        versions = {job.model_version or NO_MODEL for job in prepared.jobs}
        version = versions.pop() if len(versions) == 1 else "mixed"
        state = REQUEST_STATE.get()
        if state is not None:  # the metrics middleware labels this request's count with it
            state[MODEL_VERSION_KEY] = version
        if self.metrics is not None:
            self.metrics.observe(total_ms / 1000.0, sum(o["tiles"] for o in outputs), version)
            for job, out in zip(prepared.jobs, outputs, strict=True):
                self.metrics.add_psnr(out["cycle_psnr_db"], job.model_version or NO_MODEL)
        if prepared.protocol == "v1":
            return {"predictions": outputs}
        out = outputs[0]
        image = out.pop("image_b64")
        timings = out.pop("timings_ms")
        params: dict[str, Any] = {k: v for k, v in out.items() if v is not None}
        params.update({f"timing_{k}_ms": v for k, v in timings.items()})
        output = InferOutput(name="image", shape=[1], datatype="BYTES")
        # The base64 text either way: JSON or a binary BYTES element (tritonclient's default).
        output.set_data_from_numpy(
            np.array([image.encode("ascii")], dtype=np.object_), binary_data=prepared.binary_output
        )
        return InferResponse(
            response_id=prepared.request_id,
            model_name=self.name,
            infer_outputs=[output],
            model_version=out.get("model_version") or None,
            parameters=params,
            use_binary_outputs=prepared.binary_output,
        )

    def _finish(self, job: Job) -> dict[str, Any]:
        import base64

        assert job.sr is not None
        t0 = time.perf_counter()
        raster, p, c = job.raster, job.inp.params, job.canvas
        fmt = p.output_format
        out_raster = sr_raster(raster, job.sr, (c.out_h, c.out_w), carry_extra=fmt == "geotiff")
        if job.pixels is not None and fmt == "png":
            # What encode_output would write (k/255 quantises back to k), minus two full-image passes.
            encoded = png_bytes(np.ascontiguousarray(job.pixels), level=self.settings.png_compress_level)
        else:
            encoded = encode_output(out_raster, fmt, self.settings.png_compress_level)
        job.timings_ms["encode"] = (time.perf_counter() - t0) * 1000.0
        psnr = cycle_psnr(torch.from_numpy(raster.rgb()), job.sr)
        return {
            "image_b64": base64.b64encode(encoded).decode("ascii"),
            "format": fmt,
            "width": c.out_w,
            "height": c.out_h,
            "scale": p.scale,
            "steps": job.steps if job.steps is not None else p.steps,
            "seed": p.seed,
            "model_version": job.model_version,
            "tiles": len(job.specs),
            "tile_size": job.tile,
            "cycle_psnr_db": round(psnr, 3),
            "timings_ms": {k: round(v, 2) for k, v in job.timings_ms.items()},
        }


def wants_binary_output(request: InferRequest) -> bool:
    """The binary tensor extension for the answer: asked per output (``binary_data``) or for all
    (``binary_data_output``, what tritonclient sends when no outputs are named)."""
    binary = bool((request.parameters or {}).get("binary_data_output", False))
    for out in request.request_outputs or []:
        params = out.parameters or {}
        if "binary_data" in params:
            binary = bool(params["binary_data"])
    return binary


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
