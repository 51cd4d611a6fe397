"""``hndsr serve worker``: runs asynchronous jobs from Redis through the core's engine, in process.

The main thread takes one job at a time (BLMOVE, :class:`serving.jobs.store.JobStore`), decodes the
input, runs :func:`hndsr.inference.upscale_raster` (the same engine as ``hndsr sr`` and the
predictor's model), encodes PNG or GeoTIFF and commits the result. GeoTIFF results are streamed to a
scratch file by :func:`hndsr.streaming.upscale_raster_to_geotiff` (same pixels, no output canvas in
memory) and uploaded from it, so scene-size outputs fit; PNG results are rendered in memory.

A maintenance thread heartbeats the current job's lease (every third of the visibility timeout, with
tiles done / total), recovers the jobs of dead workers, moves due retries back to the queue and
deletes expired S3 objects.

Failures: an input the engine refuses (undecodable, too small, wrong bands) is permanent — straight to
the dead-letter queue with the reason; anything else (S3 down, out of memory, a device error) is
retried with backoff up to the configured attempts. SIGTERM stops after handing the current job back
to the head of the queue (not counted as an attempt).

A small HTTP server (``--http-port``, default 8082) serves ``/metrics`` (Prometheus), ``/health``
(200 when the model is loaded and Redis answers, else 503 with the reason: readiness) and ``/live``
(200 while the maintenance thread runs: liveness).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hndsr.errors import HNDSRError, InputError, OutputValidationError
from hndsr.image_read import read_image_bytes
from hndsr.image_write import encode_image
from hndsr.inference import Upscaler, upscale_raster
from hndsr.model_pass import UNCERTAINTY_BAND
from hndsr.raster import check_pixel_range
from hndsr.resample import sr_size
from hndsr.streaming import upscale_raster_to_geotiff
from hndsr.uncertainty_output import last_band_mean
from serving.image_work import uncertainty_png
from serving.jobs.metrics import JobMetrics
from serving.jobs.store import JobConfig, JobStore, Lease
from serving.worker_health import HealthServer

logger = logging.getLogger(__name__)


@dataclass
class WorkerSettings:
    storage_uri: str = "release"
    device: str | None = None
    tile: int = 1024  # output px per tile (the engine's default)
    max_input_pixels: int = 20_000 * 20_000  # decompression-bomb guard; scenes are large here
    # PNG results: the engine holds the whole output canvas (peak bytes per output pixel measured:
    # benchmarks/NOTES.md): refuse what cannot fit rather than be OOM-killed max_attempts times.
    max_output_pixels: int = 400_000_000
    # GeoTIFF results are streamed: memory is the decoded input (~1-2 bytes per output pixel at x4), the
    # diffusion path's latent noise (4 bytes per output pixel for the release model; none when steps=0)
    # and a band of tile x width; the scratch file needs disk for the compressed result.
    max_stream_output_pixels: int = 2_000_000_000
    scratch_dir: str | None = None  # streamed GeoTIFF results (default: the system temp dir)
    png_compress_level: int = 1
    block_s: float = 2.0  # how long one BLMOVE waits
    maintenance_s: float = 1.0  # reaper / sweeper period
    http_host: str = "0.0.0.0"
    http_port: int | None = 8082  # None: no HTTP server
    name: str = ""
    cache_dir: str | None = None


class _Abort(Exception):
    """Stop the current job: its lease was lost, or the worker is stopping."""


def is_permanent(exc: BaseException) -> bool:
    """The input itself is unusable: retrying cannot help."""
    return isinstance(exc, InputError)


class Worker:
    def __init__(
        self,
        store: JobStore,
        upscaler: Upscaler,
        settings: WorkerSettings,
        *,
        metrics: JobMetrics | None = None,
        model_version: str = "",
        checkpoint_sha256: str = "",
    ) -> None:
        self.store = store
        self.upscaler = upscaler
        self.settings = settings
        self.metrics = metrics
        self.model_version = model_version
        self.checkpoint_sha256 = checkpoint_sha256  # named by each GeoTIFF result's STAC Item
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.stop = threading.Event()
        self.last_tick = time.monotonic()
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._progress = (0, 0)
        self._lease_lost = threading.Event()

    # ------------------------------------------------------------------------------ main loop

    def run(self) -> None:
        maintenance = threading.Thread(target=self._maintain, name="job-maintenance", daemon=True)
        maintenance.start()
        logger.info("worker %s taking jobs from %s", self.name, self.store.ns)
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # Redis down (jobs' own failures never get here): wait and retry
                logger.warning("worker %s: %s; retrying in 2 s", self.name, exc)
                self.stop.wait(2.0)
        maintenance.join(timeout=5.0)

    def run_once(self, block_s: float | None = None) -> str | None:
        """Take and run one job (waiting up to ``block_s``); returns the outcome, None when idle."""
        lease = self.store.claim(self.name, block_s=self.settings.block_s if block_s is None else block_s)
        if lease is None:
            return None
        with self._lock:
            self._lease, self._progress = lease, (0, 0)
            self._lease_lost.clear()
        try:
            outcome = self._run(lease)
        finally:
            with self._lock:
                self._lease = None
        if self.metrics is not None:
            self.metrics.outcome(outcome)
        return outcome

    def _run(self, lease: Lease) -> str:
        started = time.perf_counter()
        logger.info("job %s: attempt %d on %s", lease.id, lease.attempt, self.name)
        try:
            with tempfile.TemporaryDirectory(prefix="hndsr-job-", dir=self.settings.scratch_dir) as scratch:
                data, ext, meta = self._render(lease, Path(scratch))
                spread_png = meta.pop("uncertainty_png", None)
                if spread_png is not None:  # samples >= 2 with PNG: the std as a second image
                    meta["uncertainty"] = self.store.store_result(
                        lease, spread_png, "png", name="uncertainty"
                    )
                item = meta.pop("stac_item", None)
                if item is not None:  # a GeoTIFF result: its STAC Item beside it
                    meta["stac"] = self.store.store_result(lease, item, "json", name="stac")
                ref = self.store.store_result(lease, data, ext)
        except _Abort:
            if self.stop.is_set() and self.store.release(lease):
                logger.info("job %s handed back (worker stopping)", lease.id)
                return "released"
            logger.warning("job %s: lease lost (visibility timeout passed); dropping this attempt", lease.id)
            return "stale"
        except Exception as exc:
            permanent = is_permanent(exc)
            reason = str(exc) if isinstance(exc, HNDSRError) else f"{type(exc).__name__}: {exc}"
            kind = type(exc).__name__
            outcome = self.store.fail(lease, reason, kind=kind, permanent=permanent)
            log = logger.error if outcome == "dead" else logger.warning
            log("job %s attempt %d failed (%s): %s -> %s", lease.id, lease.attempt, kind, reason, outcome)
            return outcome
        meta["seconds"] = round(time.perf_counter() - started, 3)
        if not self.store.complete(lease, ref, meta):
            logger.warning("job %s: finished after its lease was lost; result discarded", lease.id)
            return "stale"
        if self.metrics is not None:
            created = float(lease.record.get("created", "0") or 0)
            if created:
                self.metrics.latency_s.observe(max(0.0, self.store.now() - created))
        logger.info("job %s done in %.1f s (%s)", lease.id, meta["seconds"], ref)
        return "done"

    def _render(self, lease: Lease, scratch: Path) -> tuple[bytes | Path, str, dict[str, Any]]:
        p = lease.params
        raster = read_image_bytes(
            self.store.input_of(lease),
            max_pixels=self.settings.max_input_pixels,
            name=f"job {lease.id} input",
        )
        check_pixel_range(raster.rgb(), "the input")  # non-finite or outside [0, 1]: permanent
        scale = float(p.get("scale", 4.0))
        fmt = p.get("output_format", "png")
        out_h, out_w = sr_size((raster.height, raster.width), scale)
        s = self.settings
        if fmt == "geotiff" and out_h * out_w > s.max_stream_output_pixels:
            raise InputError(
                f"the output would be {out_w}x{out_h} = {out_h * out_w / 1e6:,.1f} MP, over this worker's "
                f"limit of {s.max_stream_output_pixels / 1e6:,.1f} MP for streamed GeoTIFF results (memory: "
                "the decoded input plus 4 bytes per output pixel of diffusion noise): split the scene, or "
                "run workers with more memory and --max-stream-output-mp"
            )
        if fmt != "geotiff" and out_h * out_w > s.max_output_pixels:
            raise InputError(
                f"the output would be {out_w}x{out_h} = {out_h * out_w / 1e6:,.1f} MP, over this worker's "
                f"limit of {s.max_output_pixels / 1e6:,.1f} MP (PNG results are rendered in memory, about 50 "
                "bytes per output pixel): ask for output_format geotiff (streamed, up to "
                f"{s.max_stream_output_pixels / 1e6:,.0f} MP), split the scene, or run workers with more "
                "memory and --max-output-mp"
            )
        options: dict[str, Any] = {
            "scale": scale,
            "steps": p.get("steps"),
            "strength": p.get("strength"),
            "seed": int(p.get("seed", 0)),
            "progress": self._on_progress,
        }
        samples = int(p.get("samples", 1))
        if samples > 1:  # K seeded draws: the engine's last band is their per-pixel std (UNCERTAINTY_BAND)
            options["samples"] = samples
        if fmt == "geotiff":
            path = scratch / "result.tif"
            cog = bool(p.get("cog", True))
            upscale_raster_to_geotiff(self.upscaler, raster, path, cog=cog, **options)
            meta = self._meta(fmt, out_w, out_h, path.stat().st_size)
            if samples > 1:
                meta["uncertainty_mean"] = round(last_band_mean(path), 6)
            meta["stac_item"] = self._stac_item(lease, path, scale=scale, samples=samples, cog=cog)
            return path, "tif", meta
        out = upscale_raster(self.upscaler, raster, **options)
        spread = None
        if samples > 1 and out.band_names[-1:] == (UNCERTAINTY_BAND,):
            spread = out.data[-1]
        if fmt != "geotiff":  # PNG holds R,G,B only
            out = replace(out, data=out.data[:3], band_names=out.band_names[:3])
        data = encode_image(
            out,
            "png" if fmt == "png" else "geotiff",
            png_level=self.settings.png_compress_level,
            cog=bool(p.get("cog", True)),
        )
        if not data:
            raise OutputValidationError("the encoder produced an empty image")
        meta = self._meta(fmt, out.width, out.height, len(data))
        if spread is not None:
            meta["uncertainty_mean"] = round(float(np.mean(spread, dtype=np.float64)), 6)
            if fmt == "png":  # as the transformer's second PNG (serving.image_work.uncertainty_png)
                meta["uncertainty_png"] = uncertainty_png(spread, self.settings.png_compress_level)
        return data, "png" if fmt == "png" else "tif", meta

    def _stac_item(self, lease: Lease, path: Path, *, scale: float, samples: int, cog: bool) -> bytes:
        """The result's STAC Item: its id is the job's, its data asset the job's result URL."""
        from hndsr.stac_items import DATA_ASSET, item_for_output, item_json

        p = lease.params
        steps = p.get("steps")
        item = item_for_output(
            path,
            scale=scale,
            model_version=self.model_version,
            checkpoint_sha256=self.checkpoint_sha256,
            steps=self.upscaler.model.default_steps if steps is None else int(steps),
            seed=int(p.get("seed", 0)),
            samples=samples,
            source=None,
            cog=cog,
        )
        item.id = lease.id
        item.properties["processing:lineage"] += f" (asynchronous job {lease.id})"
        item.assets[DATA_ASSET].href = f"/jobs/{lease.id}/result"
        return item_json(item)

    def _meta(self, fmt: str, width: int, height: int, size: int) -> dict[str, Any]:
        done, total = self._progress
        return {
            "format": fmt,
            "width": width,
            "height": height,
            "result_bytes": size,
            "tiles_done": done,
            "tiles_total": total,
            "model_version": self.model_version,
        }

    def _on_progress(self, done: int, total: int) -> None:
        with self._lock:
            previous = self._progress[0]
            self._progress = (done, total)
        if self.metrics is not None:
            self.metrics.tiles.inc(done - previous)
        if self._lease_lost.is_set() or self.stop.is_set():
            raise _Abort

    # ------------------------------------------------------------------------------ maintenance

    def _maintain(self) -> None:
        period = max(0.05, min(self.settings.maintenance_s, self.store.config.visibility_timeout_s / 3.0))
        while not self.stop.is_set():
            self.last_tick = time.monotonic()
            try:
                self._tick()
            except Exception as exc:  # Redis or S3 hiccup: next tick
                logger.warning("job maintenance: %s", exc)
            self.stop.wait(period)

    def _tick(self) -> None:
        with self._lock:
            lease, (done, total) = self._lease, self._progress
        if lease is not None and not self.store.heartbeat(lease, done, total):
            self._lease_lost.set()
        requeued, dead, _ = self.store.reap()
        if requeued or dead:
            logger.warning("recovered jobs of lost workers: %d requeued, %d dead-lettered", requeued, dead)
        self.store.blobs.sweep_expired()

    # ------------------------------------------------------------------------------ health

    def status(self) -> dict[str, Any]:
        reason = None
        try:
            self.store.ping()
        except Exception as exc:
            reason = f"Redis unreachable ({type(exc).__name__}: {exc})"
        if time.monotonic() - self.last_tick > max(30.0, 3 * self.settings.maintenance_s):
            reason = "the maintenance thread is stuck"
        with self._lock:
            lease, progress = self._lease, self._progress
        return {
            "status": "ready" if reason is None else "degraded",
            "ready": reason is None,
            "reason": reason,
            "worker": self.name,
            "model_version": self.model_version,
            "job": lease.id if lease else None,
            "tiles_done": progress[0],
            "tiles_total": progress[1],
        }


def load_upscaler(settings: WorkerSettings) -> tuple[Upscaler, str, str]:
    """The engine, the model version and the checkpoint's sha256."""
    from hndsr.checkpoint import checkpoint_version, load_checkpoint
    from serving.storage import resolve_storage_uri

    directory = resolve_storage_uri(settings.storage_uri, cache_dir=settings.cache_dir)
    model, config = load_checkpoint(directory)
    sha, version = str(config.get("sha256", "")), checkpoint_version(config)
    return Upscaler(model, device=settings.device, tile=settings.tile), version, sha


def run_worker(config: JobConfig, settings: WorkerSettings) -> None:
    """Serve health and metrics, load the model (a failure keeps /health 503 with the reason and
    exits non-zero), then take jobs until SIGTERM/SIGINT."""
    store = JobStore(config)
    metrics = JobMetrics(store)
    health = None
    if settings.http_port is not None:
        health = HealthServer(settings.http_host, settings.http_port, metrics.registry).start()
    try:
        try:
            upscaler, version, sha256 = load_upscaler(settings)
        except Exception as exc:
            if health is not None:
                health.loading_error = f"model not loaded: {exc}"
            raise
        metrics.model_version = version
        worker = Worker(
            store, upscaler, settings, metrics=metrics, model_version=version, checkpoint_sha256=sha256
        )

        def on_signal(signum: int, _frame: Any) -> None:
            logger.info(
                "worker %s: signal %d, stopping after handing back the current job", worker.name, signum
            )
            worker.stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if health is not None:
            health.worker = worker
        logger.info("worker %s ready: model %s on %s", worker.name, version, upscaler.device)
        worker.run()
    finally:
        if health is not None:
            health.close()
