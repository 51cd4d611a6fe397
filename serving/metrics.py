"""Prometheus metrics of the HNDSR servers, exported on ``/metrics`` beside KServe's own.

=============================== ========= ==========================================================
name                            type      meaning
=============================== ========= ==========================================================
hndsr_inference_latency_seconds histogram predictor: model time per tile batch; transformer: per request
hndsr_requests_total{code}      counter   inference requests by final HTTP status
hndsr_errors_total{kind}        counter   errors by kind (see :mod:`serving.errors`)
hndsr_gpu_vram_used_bytes       gauge     CUDA memory allocated by this process (0 on CPU)
hndsr_queue_depth               gauge     requests (transformer) / inferences (predictor) waiting
hndsr_circuit_breaker_state     gauge     0 closed, 1 half-open, 2 open
hndsr_psnr_rolling_mean         gauge     transformer: mean cycle-consistency PSNR (dB) of recent requests
hndsr_tiles_total               counter   tiles processed
hndsr_gpu_vram_total_bytes      gauge     memory of the CUDA device in use (0 on CPU / before CUDA starts)
hndsr_request_stats_dropped_total{reason} counter request statistics not recorded (drift monitoring)
=============================== ========= ==========================================================

The cycle-consistency PSNR is a no-reference quality signal: the output downsampled back to the
input size (the evaluation protocol's antialiased bicubic) against the input. A model that invents
content, shifts it or returns garbage drops it; a drop across recent requests is an alert.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Seconds, the Prometheus base unit (``promtool check metrics`` refuses ``_ms``).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class RollingMean:
    """Mean of the last ``window`` values (thread-safe)."""

    def __init__(self, window: int = 100) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def mean(self) -> float:
        with self._lock:
            return sum(self._values) / len(self._values) if self._values else float("nan")


class ServingMetrics:
    """The metric objects of one server process. Pass a fresh ``CollectorRegistry`` in tests."""

    def __init__(self, registry: CollectorRegistry | None = None, *, psnr_window: int = 100) -> None:
        registry = REGISTRY if registry is None else registry
        self.latency_s = Histogram(
            "hndsr_inference_latency_seconds",
            "Inference latency, seconds (predictor: per tile batch on the model; transformer: per request).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.requests = Counter(
            "hndsr_requests", "Inference requests by final HTTP status code.", ["code"], registry=registry
        )
        self.errors = Counter("hndsr_errors", "Errors by kind.", ["kind"], registry=registry)
        self.tiles = Counter("hndsr_tiles", "Tiles processed.", registry=registry)
        self.vram = Gauge(
            "hndsr_gpu_vram_used_bytes",
            "CUDA memory allocated by this process (0 on CPU).",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "hndsr_queue_depth", "Requests or inferences waiting for a slot.", registry=registry
        )
        self.breaker_state = Gauge(
            "hndsr_circuit_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )
        self.psnr_rolling_mean = Gauge(
            "hndsr_psnr_rolling_mean",
            "Rolling mean of the cycle-consistency PSNR (dB): output downsampled back vs input.",
            registry=registry,
        )
        self.psnr = RollingMean(psnr_window)
        self.psnr_rolling_mean.set_function(self.psnr.mean)
        self.vram.set(0)
        # The denominator of the GPU-memory alert (used / total), read at scrape time.
        self.vram_total = Gauge(
            "hndsr_gpu_vram_total_bytes",
            "Memory of the CUDA device in use (0 on CPU or before CUDA is initialised).",
            registry=registry,
        )
        self.vram_total.set_function(_cuda_total_bytes)
        self.request_stats_dropped = Counter(
            "hndsr_request_stats_dropped",
            "Request statistics not recorded for drift monitoring (queue_full, sink_error, feature_error).",
            ["reason"],
            registry=registry,
        )

    def bind(
        self,
        *,
        queue_depth: Callable[[], float] | None = None,
        breaker_state: Callable[[], float] | None = None,
        vram: Callable[[], float] | None = None,
    ) -> None:
        """Gauges read at scrape time from the live objects."""
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        if breaker_state is not None:
            self.breaker_state.set_function(breaker_state)
        if vram is not None:
            self.vram.set_function(vram)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def request(self, code: int) -> None:
        self.requests.labels(code=str(code)).inc()

    def stats_dropped(self, reason: str, n: int = 1) -> None:
        self.request_stats_dropped.labels(reason=reason).inc(n)

    def add_psnr(self, value: float) -> None:
        if value == value:  # not NaN
            self.psnr.add(min(value, 100.0))


def _cuda_total_bytes() -> float:
    import torch  # already loaded by the servers; never initialises CUDA here

    if not torch.cuda.is_initialized():
        return 0.0
    return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
