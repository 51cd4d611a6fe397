"""Per-request image statistics for drift monitoring, recorded off the request path.

The transformer hands each decoded input to :meth:`RequestStatsRecorder.offer`, which only enqueues
it (never blocks, never raises). A worker thread computes :func:`monitoring.features.raster_features`
and appends one JSON line per image to a sink: rotated local JSONL files or objects under an S3
prefix. No pixels are stored. A full queue (bounded in images and bytes) or a failing sink drops
records, counted in ``hndsr_request_stats_dropped_total{reason}``.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from hndsr.raster import Raster
from monitoring.features import raster_features

logger = logging.getLogger(__name__)

RECORD_PREFIX = "requests-"
RECORD_SUFFIX = ".jsonl"


class SinkError(Exception):
    """A sink lost ``records`` records (their lines are gone, not retried)."""

    def __init__(self, records: int, cause: BaseException) -> None:
        super().__init__(f"{records} records lost: {type(cause).__name__}: {cause}")
        self.records = records


class StatsSink(Protocol):
    def write(self, lines: list[bytes]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:].replace(".", "")


class JsonlDirSink:
    """Appends to ``<dir>/requests-<UTC start>-<host>-<pid>.jsonl``; a file over ``max_bytes`` is
    closed and a new one started, so readers select files by modification time."""

    def __init__(self, directory: str | Path, *, max_bytes: int = 16 * 2**20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._file: io.BufferedWriter | None = None
        self._size = 0
        self._tag = f"{socket.gethostname()}-{os.getpid()}"

    def _open(self) -> io.BufferedWriter:
        if self._file is None or self._size >= self.max_bytes:
            if self._file is not None:
                self._file.close()
            path = self.directory / f"{RECORD_PREFIX}{_stamp(time.time())}-{self._tag}{RECORD_SUFFIX}"
            self._file = open(path, "ab")  # noqa: SIM115 - kept open across writes, closed on rotation
            self._size = path.stat().st_size
        return self._file

    def write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        try:
            f = self._open()
            f.write(data)
            f.flush()  # written line by line: readers see whole records of a live writer
        except OSError as exc:
            raise SinkError(len(lines), exc) from exc
        self._size += len(data)

    def flush(self) -> None:
        pass  # every write is flushed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class S3Sink:
    """Buffers lines and uploads them as one object per batch under ``s3://bucket/prefix/`` (S3 has no
    append): every ``flush_records`` lines or ``flush_s`` seconds, and on close."""

    def __init__(self, uri: str, *, flush_records: int = 500, flush_s: float = 60.0) -> None:
        from lake.storage import S3Settings, parse_s3_uri

        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = S3Settings.from_env()
        self.client = self.settings.client()
        self.flush_records = flush_records
        self.flush_s = flush_s
        self._pending: list[bytes] = []
        self._since = time.monotonic()
        self._tag = f"{socket.gethostname()}-{os.getpid()}"

    def write(self, lines: list[bytes]) -> None:
        self._pending.extend(lines)
        if len(self._pending) >= self.flush_records or time.monotonic() - self._since >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending, self._since = self._pending, [], time.monotonic()
        data = b"".join(lines)
        key = f"{self.prefix}{RECORD_PREFIX}{_stamp(time.time())}-{self._tag}{RECORD_SUFFIX}"
        try:
            self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type="application/x-ndjson"
            )
        except Exception as exc:  # connection and S3 errors alike: the batch is lost
            raise SinkError(len(lines), exc) from exc

    def close(self) -> None:
        self.flush()


def open_sink(target: str) -> StatsSink:
    """``s3://bucket/prefix`` (S3 settings from the environment, as everywhere) or a directory."""
    if target.startswith("s3://"):
        return S3Sink(target)
    return JsonlDirSink(target)


@dataclass
class _Item:
    raster: Raster
    context: dict[str, Any]
    nbytes: int


class RequestStatsRecorder:
    """Bounded hand-off from the request path to a worker thread that writes records to a sink.

    ``on_drop(reason, n)`` is called for every dropped record: ``queue_full`` (the worker is behind),
    ``sink_error`` (the write failed) or ``feature_error`` (the statistics could not be computed).
    """

    def __init__(
        self,
        sink: StatsSink,
        *,
        max_pending: int = 64,
        max_pending_bytes: int = 256 * 2**20,
        on_drop: Callable[[str, int], None] | None = None,
        idle_flush_s: float = 60.0,
    ) -> None:
        self.sink = sink
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.on_drop = on_drop
        self.idle_flush_s = idle_flush_s
        self.recorded = 0
        self.dropped = 0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._pending_bytes = 0
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="request-stats", daemon=True)
        self._worker.start()
        atexit.register(self.close)

    def offer(self, raster: Raster, **context: Any) -> bool:
        """Queue one decoded input image with its request context (scale, steps ...); False if dropped.
        Keeps a reference to the raster (never modified after decoding), no copy."""
        nbytes = int(raster.data.nbytes)
        with self._lock:
            full = (
                self._closed
                or self._pending >= self.max_pending
                or self._pending_bytes + nbytes > self.max_pending_bytes
            )
            if not full:
                self._pending += 1
                self._pending_bytes += nbytes
        if full:
            self._drop("queue_full", 1)
            return False
        self._queue.put(_Item(raster, {"ts": time.time(), **context}, nbytes))
        return True

    def _drop(self, reason: str, n: int) -> None:
        self.dropped += n
        if self.on_drop is not None:
            try:
                self.on_drop(reason, n)
            except Exception:  # a metrics hiccup must not stop recording
                logger.exception("request-stats drop callback failed")

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.idle_flush_s)
            except queue.Empty:
                self._flush_idle()
                continue
            if item is None:
                return
            try:
                self._record(item)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._pending_bytes -= item.nbytes

    def _record(self, item: _Item) -> None:
        try:
            record = item.context | raster_features(item.raster)
        except Exception:
            logger.exception("request statistics failed for one image; record dropped")
            self._drop("feature_error", 1)
            return
        try:
            self.sink.write([orjson.dumps(record) + b"\n"])
            self.recorded += 1
        except SinkError as exc:
            logger.warning("request statistics sink failed (%s)", exc)
            self._drop("sink_error", exc.records)

    def _flush_idle(self) -> None:
        try:
            self.sink.flush()
        except SinkError as exc:
            logger.warning("request statistics flush failed (%s)", exc)
            self._drop("sink_error", exc.records)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to ``timeout_s``), then close the sink. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout_s)
        try:
            self.sink.close()
        except SinkError as exc:
            logger.warning("request statistics sink failed on close (%s)", exc)
            self._drop("sink_error", exc.records)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once nothing is queued (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False
