"""Prometheus metrics of the asynchronous jobs (a worker's ``/metrics``).

================================== ========= =======================================================
name                               type      meaning
================================== ========= =======================================================
hndsr_jobs_queue_depth             gauge     jobs waiting to run (queue; read from Redis at scrape)
hndsr_jobs_delayed                 gauge     jobs waiting for a retry (backoff)
hndsr_jobs_processing              gauge     jobs taken by a worker (processing list)
hndsr_jobs_dead_letter             gauge     jobs in the dead-letter queue
hndsr_jobs_redis_up                gauge     1 when the last scrape reached Redis
hndsr_jobs_latency_seconds         histogram submission to completion of the jobs this worker finished
hndsr_jobs_attempts_total{outcome} counter   attempts by outcome: done, retry, dead, stale, released
hndsr_jobs_tiles_total             counter   tiles rendered
hndsr_jobs_worker_peak_rss_bytes   gauge     the peak resident memory of this worker process
================================== ========= =======================================================

The queue gauges are global (every worker reports the same values): alert or autoscale on any one.
Every sample carries ``revision`` and ``model_version`` (the worker's checkpoint, ``none`` until it
is loaded), as the servers' do (:mod:`serving.metrics`).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.jobs.store import JobStore
from serving.metrics import NO_MODEL, IdentityCollector, serving_revision

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class QueueCollector(Collector):
    """Queue lengths straight from Redis at scrape time."""

    UP = ("hndsr_jobs_redis_up", "1 when this scrape reached Redis.")
    QUEUES = (  # (metric, key of JobStore.counts(), help)
        ("hndsr_jobs_queue_depth", "queued", "Jobs waiting to run."),
        ("hndsr_jobs_delayed", "delayed", "Jobs waiting for a retry after a failed attempt."),
        ("hndsr_jobs_processing", "processing", "Jobs taken by a worker."),
        ("hndsr_jobs_dead_letter", "dead", "Jobs in the dead-letter queue."),
    )
    NAMES = (UP[0], *(name for name, _, _ in QUEUES))

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def describe(self) -> list[Any]:  # the names, without reaching Redis
        return [GaugeMetricFamily(name, name) for name in self.NAMES]

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(*self.UP)
        try:
            counts = self.store.counts()
        except Exception as exc:  # a scrape must not fail because Redis did
            logger.warning("metrics: Redis unreachable (%s)", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        for name, key, text in self.QUEUES:
            yield GaugeMetricFamily(name, text, value=float(counts[key]))


def peak_rss_bytes() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0  # Linux: KiB


class JobMetrics:
    def __init__(
        self, store: JobStore, registry: CollectorRegistry | None = None, *, revision: str | None = None
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.model_version = NO_MODEL  # set once the worker loaded its checkpoint
        self.latency_s = Histogram(
            "hndsr_jobs_latency_seconds",
            "Submission to completion of the jobs this worker finished (queueing and retries included).",
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.attempts = Counter(
            "hndsr_jobs_attempts",
            "Attempts by outcome (done, retry, dead, stale, released).",
            ["outcome"],
            registry=None,
        )
        self.tiles = Counter("hndsr_jobs_tiles", "Tiles rendered.", registry=None)
        self.peak_rss = Gauge(
            "hndsr_jobs_worker_peak_rss_bytes", "Peak resident memory of this worker.", registry=None
        )
        self.peak_rss.set_function(peak_rss_bytes)
        collectors = [QueueCollector(store), self.latency_s, self.attempts, self.tiles, self.peak_rss]
        self.registry.register(
            IdentityCollector(collectors, revision or serving_revision(), lambda: self.model_version)
        )

    def outcome(self, name: str) -> None:
        self.attempts.labels(outcome=name).inc()
