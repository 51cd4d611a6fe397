"""The transformer's settings: the predictor hop, tiling, admission, the circuit breaker and the
asynchronous path (``hndsr serve transformer`` sets them from its options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.jobs.store import JobConfig
from serving.validation import Limits


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
    # Deflate level of PNG outputs (0-9); 1-3 use ISA-L, much faster than zlib (benchmarks/NOTES.md).
    png_compress_level: int = 1
    request_stats: str | None = None  # DIR | s3://bucket/prefix: per-request image statistics (drift)
    job_queue: JobConfig | None = None  # set: requests above max_sync_tiles become jobs (202, serving.jobs)
