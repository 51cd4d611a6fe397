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
hndsr_uncertainty_mean          histogram transformer: mean per-pixel std of an image with samples >= 2
=============================== ========= ==========================================================

Every sample also carries ``revision`` (the server's revision: ``HNDSR_REVISION``, else Knative's
``K_REVISION``, else ``local``) and ``model_version`` (the model that answered: the predictor's
loaded checkpoint; on the transformer, per request, the version the predictor reported, ``none``
where no model answered, e.g. a rejected request or the transformer's own gauges), so that a canary
revision and the stable one are two series of every metric.

The cycle-consistency PSNR is a no-reference quality signal: the output downsampled back to the
input size (the evaluation protocol's antialiased bicubic) against the input. A model that invents
content, shifts it or returns garbage drops it; a drop across recent requests is an alert. It is
exported per model version once that version answered a request (never NaN), and a version that
answered none of the last ``10 * window`` requests is dropped (a rolled-back canary stops alerting).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# Seconds, the Prometheus base unit (``promtool check metrics`` refuses ``_ms``).
# The mean per-pixel std of K draws (values in [0, 1]; at most 0.5): fine where outputs usually lie.
UNCERTAINTY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: The labels every hndsr_* sample of a server carries.
IDENTITY_LABELS = ("revision", "model_version")
#: model_version of what no single model answered (rejected requests, process-wide gauges of the transformer).
NO_MODEL = "none"
#: scope["state"] key: the model version that answered the request (the transformer sets it).
MODEL_VERSION_KEY = "hndsr_model_version"


def serving_revision() -> str:
    """This server's revision: ``HNDSR_REVISION``, else Knative's ``K_REVISION``, else ``local``."""
    return os.environ.get("HNDSR_REVISION") or os.environ.get("K_REVISION") or "local"


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


class RollingMeans:
    """One :class:`RollingMean` per model version; a version that answered none of the last
    ``forget_after`` values is forgotten."""

    def __init__(self, window: int = 100, forget_after: int = 1000) -> None:
        self.window = window
        self.forget_after = forget_after
        self._means: dict[str, RollingMean] = {}
        self._last: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def add(self, version: str, value: float) -> None:
        with self._lock:
            self._count += 1
            self._means.setdefault(version, RollingMean(self.window)).add(value)
            self._last[version] = self._count
            for old in [v for v, n in self._last.items() if self._count - n >= self.forget_after]:
                del self._means[old], self._last[old]

    def means(self) -> dict[str, float]:
        with self._lock:
            return {v: m.mean() for v, m in self._means.items()}


class _QualityProxy(Collector):
    """hndsr_psnr_rolling_mean{model_version}: only versions with values, so never NaN."""

    def __init__(self, means: RollingMeans) -> None:
        self.means = means

    def collect(self) -> Iterator[Metric]:
        family = Metric(
            "hndsr_psnr_rolling_mean",
            "Rolling mean of the cycle-consistency PSNR (dB): output downsampled back vs input.",
            "gauge",
        )
        for version, mean in sorted(self.means.means().items()):
            family.add_sample("hndsr_psnr_rolling_mean", {"model_version": version}, mean)
        yield family


class IdentityCollector(Collector):
    """``collectors`` (metrics created with ``registry=None``) with ``revision`` and ``model_version``
    added to every sample (a sample's own ``model_version`` wins): constant labels, which
    prometheus_client lacks."""

    def __init__(self, collectors: list[Collector], revision: str, model_version: Callable[[], str]) -> None:
        self.collectors = collectors
        self.revision = revision
        self.model_version = model_version

    def describe(self) -> list[Metric]:  # names only: no scrape-time callback runs at registration
        return [m for c in self.collectors for m in getattr(c, "describe", c.collect)()]

    def collect(self) -> Iterator[Metric]:
        identity = {"revision": self.revision, "model_version": self.model_version() or NO_MODEL}
        for family in (m for c in self.collectors for m in c.collect()):
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [
                Sample(s.name, identity | s.labels, s.value, s.timestamp, s.exemplar, s.native_histogram)
                for s in family.samples
            ]
            yield out


class ServingMetrics:
    """The metric objects of one server process. Pass a fresh ``CollectorRegistry`` in tests.

    ``quality_proxy``: export hndsr_psnr_rolling_mean (the transformer computes it; the predictor
    has nothing to put there)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        revision: str | None = None,
        quality_proxy: bool = True,
        psnr_window: int = 100,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.revision = revision or serving_revision()
        self.default_model_version: Callable[[], str] = lambda: NO_MODEL
        self.latency_s = Histogram(
            "hndsr_inference_latency_seconds",
            "Inference latency, seconds (predictor: per tile batch on the model; transformer: per request).",
            ["model_version"],
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.requests = Counter(
            "hndsr_requests",
            "Inference requests by final HTTP status code.",
            ["code", "model_version"],
            registry=None,
        )
        self.errors = Counter("hndsr_errors", "Errors by kind.", ["kind", "model_version"], registry=None)
        self.tiles = Counter("hndsr_tiles", "Tiles processed.", ["model_version"], registry=None)
        self.vram = Gauge(
            "hndsr_gpu_vram_used_bytes",
            "CUDA memory allocated by this process (0 on CPU).",
            registry=None,
        )
        self.queue_depth = Gauge(
            "hndsr_queue_depth", "Requests or inferences waiting for a slot.", registry=None
        )
        self.breaker_state = Gauge(
            "hndsr_circuit_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=None,
        )
        self.psnr = RollingMeans(psnr_window, forget_after=10 * psnr_window)
        self.vram.set(0)
        # The denominator of the GPU-memory alert (used / total), read at scrape time.
        self.vram_total = Gauge(
            "hndsr_gpu_vram_total_bytes",
            "Memory of the CUDA device in use (0 on CPU or before CUDA is initialised).",
            registry=None,
        )
        self.vram_total.set_function(_cuda_total_bytes)
        self.request_stats_dropped = Counter(
            "hndsr_request_stats_dropped",
            "Request statistics not recorded for drift monitoring (queue_full, sink_error, feature_error).",
            ["reason"],
            registry=None,
        )
        self.uncertainty = Histogram(
            "hndsr_uncertainty_mean",
            "Mean per-pixel standard deviation of the K draws of an image rendered with samples >= 2.",
            ["model_version"],
            buckets=UNCERTAINTY_BUCKETS,
            registry=None,
        )
        collectors: list[Collector] = [
            self.latency_s,
            self.requests,
            self.errors,
            self.tiles,
            self.vram,
            self.queue_depth,
            self.breaker_state,
            self.vram_total,
            self.request_stats_dropped,
            self.uncertainty,
        ]
        if quality_proxy:
            collectors.append(_QualityProxy(self.psnr))
        registry.register(IdentityCollector(collectors, self.revision, lambda: self.default_model_version()))

    def bind(
        self,
        *,
        queue_depth: Callable[[], float] | None = None,
        breaker_state: Callable[[], float] | None = None,
        vram: Callable[[], float] | None = None,
        model_version: Callable[[], str] | None = None,
    ) -> None:
        """Gauges read at scrape time from the live objects; ``model_version``: the label of what
        is not attributed to a request's model (the predictor's loaded checkpoint)."""
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        if breaker_state is not None:
            self.breaker_state.set_function(breaker_state)
        if vram is not None:
            self.vram.set_function(vram)
        if model_version is not None:
            self.default_model_version = model_version

    def _version(self, model_version: str | None) -> str:
        return model_version or self.default_model_version() or NO_MODEL

    def error(self, kind: str, model_version: str | None = None) -> None:
        self.errors.labels(kind=kind, model_version=self._version(model_version)).inc()

    def request(self, code: int, model_version: str | None = None) -> None:
        self.requests.labels(code=str(code), model_version=self._version(model_version)).inc()

    def observe(self, seconds: float, tiles: int, model_version: str | None = None) -> None:
        version = self._version(model_version)
        self.latency_s.labels(model_version=version).observe(seconds)
        self.tiles.labels(model_version=version).inc(tiles)

    def stats_dropped(self, reason: str, n: int = 1) -> None:
        self.request_stats_dropped.labels(reason=reason).inc(n)

    def add_psnr(self, value: float, model_version: str | None = None) -> None:
        if not math.isnan(value):  # an identical round trip is +inf: capped
            self.psnr.add(self._version(model_version), min(value, 100.0))

    def add_uncertainty(self, value: float, model_version: str | None = None) -> None:
        """One image's mean uncertainty (a drift in it, e.g. a new model or new imagery, can alert)."""
        if math.isfinite(value):
            self.uncertainty.labels(model_version=self._version(model_version)).observe(value)


def _cuda_total_bytes() -> float:
    import torch  # already loaded by the servers; never initialises CUDA here

    if not torch.cuda.is_initialized():
        return 0.0
    return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` in a /metrics text whose labels include ``labels``;
    KeyError when there are none."""
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    if not values:
        raise KeyError(f"{name}{labels or ''} not in /metrics")
    return float(sum(values))
