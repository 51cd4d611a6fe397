"""Request statistics: one feature function for reference and requests, a recorder that never blocks
or fails a request (bounded, drops counted), rotated JSONL files and an S3 prefix as sinks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from driftdata import request_rasters
from prometheus_client import CollectorRegistry

from hndsr.image_read import read_image
from hndsr.raster import Raster
from lake.server import EmbeddedS3
from monitoring.drift.window import load_requests
from monitoring.features import CONTEXT_FIELDS, DRIFT_FEATURES, raster_features
from serving.metrics import ServingMetrics
from serving.request_stats import JsonlDirSink, RequestStatsRecorder, S3Sink, SinkError


def test_features_of_known_images() -> None:
    grey = Raster(data=np.full((3, 16, 16), 0.5, np.float32), dtype="uint8")
    f = raster_features(grey)
    assert f["mean_r"] == f["mean_g"] == f["mean_b"] == 0.5
    assert f["std_r"] == f["sharpness"] == f["colourfulness"] == f["bright_fraction"] == 0.0
    assert f["edge_crispness"] == f["detail_to_contrast"] == 0.0
    white_top = np.zeros((3, 16, 16), np.float32) + 0.2
    white_top[:, :4] = 0.95  # a cloud over a quarter of the image
    white_top[0, 8:] = 0.6  # reddish lower half: colourful
    g = raster_features(Raster(data=white_top, dtype="uint8"))
    assert g["bright_fraction"] == 0.25
    assert g["colourfulness"] > 20 and g["sharpness"] > 0
    half_nodata = np.random.default_rng(0).uniform(0.1, 0.9, (3, 16, 16)).astype(np.float32)
    half_nodata[:, :8] = 0.0  # 0 in every band: nodata
    h = raster_features(Raster(data=half_nodata, dtype="uint8"))
    assert h["nodata_fraction"] == 0.5 and 0.4 < h["mean_r"] < 0.6  # statistics of valid pixels only
    assert set(f) == set(DRIFT_FEATURES) | set(CONTEXT_FIELDS)


def test_detail_features_fall_with_blur_at_any_contrast() -> None:
    from monitoring.shifts import blur

    texture = np.random.default_rng(1).uniform(0.3, 0.7, (3, 64, 64)).astype(np.float32)
    crisp = raster_features(Raster(data=texture, dtype="uint8"))
    low_contrast = raster_features(Raster(data=0.5 + 0.25 * (texture - 0.5), dtype="uint8"))
    blurred = raster_features(Raster(data=blur(texture, 1.5), dtype="uint8"))
    # Contrast moves sharpness (the Laplacian's variance) 16-fold and edge crispness not at all.
    assert low_contrast["sharpness"] < crisp["sharpness"] / 10
    for feature in ("edge_crispness", "detail_to_contrast"):
        assert low_contrast[feature] == pytest.approx(crisp[feature], rel=1e-3)
        assert blurred[feature] < 0.7 * crisp[feature]


def test_features_agree_with_the_catalog(drift_catalog: Path) -> None:
    """The catalog's own statistics (hndsr prepare) are what raster_features computes on its tiles."""
    catalog = pd.read_parquet(drift_catalog)
    for row in catalog.head(5).itertuples():
        f = raster_features(read_image(drift_catalog.parent / row.filename))
        assert [f["mean_r"], f["mean_g"], f["mean_b"]] == list(row.band_mean)
        assert [f["std_r"], f["std_g"], f["std_b"]] == list(row.band_std)
        assert f["sharpness"] == row.sharpness and f["nodata_fraction"] == row.nodata_fraction


def test_recorder_writes_statistics_only_and_rotates(tmp_path: Path) -> None:
    rasters = request_rasters(12)
    recorder = RequestStatsRecorder(JsonlDirSink(tmp_path, max_bytes=1500), max_pending=32)
    for raster in rasters:
        assert recorder.offer(raster, scale=3.0, steps=0)
    assert recorder.wait_idle(30)
    recorder.close()
    files = sorted(tmp_path.glob("requests-*.jsonl"))
    assert len(files) > 1  # rotated by size
    records = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert len(records) == 12 and recorder.recorded == 12 and recorder.dropped == 0
    assert set(records[0]) == {"ts", "scale", "steps", *DRIFT_FEATURES, *CONTEXT_FIELDS}
    assert all(isinstance(v, float | int) for r in records for v in r.values())  # numbers, no pixels
    assert records[0]["mean_r"] == raster_features(rasters[0])["mean_r"]
    frame = load_requests(str(tmp_path), window_s=3600)
    assert len(frame) == 12 and frame["ts"].is_monotonic_increasing


class _BlockedSink:
    """A sink stuck on a slow disk / network until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def write(self, lines: list[bytes]) -> None:
        self.release.wait(30)
        self.lines.extend(lines)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_recorder_never_blocks_and_counts_drops() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    sink = _BlockedSink()
    recorder = RequestStatsRecorder(sink, max_pending=3, on_drop=metrics.stats_dropped)
    rasters = request_rasters(10)
    started = time.perf_counter()
    accepted = [recorder.offer(r, scale=4.0) for r in rasters]
    assert time.perf_counter() - started < 0.5  # offers return at once although the sink is stuck
    assert accepted.count(False) >= 6  # at most 3 queued + 1 in the worker
    dropped = metrics.request_stats_dropped.labels(reason="queue_full")._value.get()
    assert dropped == accepted.count(False) == recorder.dropped
    sink.release.set()
    assert recorder.wait_idle(30)
    assert len(sink.lines) == accepted.count(True)
    recorder.close()
    assert recorder.offer(rasters[0]) is False  # closed: dropped, not raised


def test_recorder_bounds_memory_in_bytes() -> None:
    big = Raster(data=np.zeros((3, 512, 512), np.float32), dtype="uint8")  # 3 MB
    sink = _BlockedSink()
    recorder = RequestStatsRecorder(sink, max_pending=100, max_pending_bytes=5 * 2**20)
    assert recorder.offer(big) and not recorder.offer(big)  # a second one would exceed 5 MB
    sink.release.set()
    recorder.close()


class _FailingSink(_BlockedSink):
    def write(self, lines: list[bytes]) -> None:
        raise SinkError(len(lines), OSError("disk full"))


def test_sink_failures_are_counted_never_raised() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    recorder = RequestStatsRecorder(_FailingSink(), on_drop=metrics.stats_dropped)
    for raster in request_rasters(3):
        assert recorder.offer(raster)
    assert recorder.wait_idle(30)
    recorder.close()
    assert metrics.request_stats_dropped.labels(reason="sink_error")._value.get() == 3


def test_s3_sink_and_reader(s3_server: EmbeddedS3, tmp_path: Path, monkeypatch) -> None:
    for key, value in s3_server.settings.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3_server.settings.bucket}/monitoring/requests-test"
    sink = S3Sink(uri, flush_records=4)
    recorder = RequestStatsRecorder(sink)
    for raster in request_rasters(10):
        assert recorder.offer(raster, scale=2.0)
    assert recorder.wait_idle(60)
    recorder.close()  # uploads the last partial batch
    frame = load_requests(uri, window_s=3600)
    assert len(frame) == 10 and recorder.dropped == 0
    assert set(frame["scale"]) == {2.0}
