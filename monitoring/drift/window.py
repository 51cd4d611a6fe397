"""The request records of a window, from the JSONL files or S3 objects the transformer's recorder writes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from hndsr.errors import InputError
from monitoring.features import CONTEXT_FIELDS, DRIFT_FEATURES


def load_requests(stats: str, *, window_s: float, now: float | None = None) -> pd.DataFrame:
    """Request records with ``now - window_s <= ts <= now`` from a directory or an S3 prefix of
    ``requests-*.jsonl``. Lines that do not parse (a writer killed mid-line) are skipped."""
    now = time.time() if now is None else now
    start = now - window_s
    records: list[dict[str, Any]] = []
    for blob in _stats_blobs(stats, modified_since=start):
        for line in blob.splitlines():
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict) and start <= float(rec.get("ts", -1)) <= now:
                records.append(rec)
    columns = ["ts", "scale", "steps", *CONTEXT_FIELDS, *DRIFT_FEATURES]
    frame = pd.DataFrame(records)
    for column in columns:
        if column not in frame.columns:
            frame[column] = np.nan
    return frame.dropna(subset=list(DRIFT_FEATURES)).sort_values("ts").reset_index(drop=True)


def _stats_blobs(stats: str, *, modified_since: float) -> Iterator[bytes]:
    from serving.request_stats import RECORD_PREFIX, RECORD_SUFFIX

    if stats.startswith("s3://"):
        from lake.storage import S3Settings, parse_s3_uri

        bucket, prefix = parse_s3_uri(stats)
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        client = S3Settings.from_env().client()
        for obj in client.list_objects(bucket, prefix, recursive=True):
            name = obj.object_name.rsplit("/", 1)[-1]
            if not (name.startswith(RECORD_PREFIX) and name.endswith(RECORD_SUFFIX)):
                continue
            if obj.last_modified is not None and obj.last_modified.timestamp() < modified_since:
                continue
            response = client.get_object(bucket, obj.object_name)
            try:
                yield response.read()
            finally:
                response.close()
                response.release_conn()
        return
    root = Path(stats)
    if not root.is_dir():
        raise InputError(
            f"request statistics folder {stats} does not exist (hndsr serve transformer --request-stats)"
        )
    for path in sorted(root.rglob(f"{RECORD_PREFIX}*{RECORD_SUFFIX}")):
        if path.stat().st_mtime >= modified_since:  # rotated files older than the window are skipped
            yield path.read_bytes()


# ---------------------------------------------------------------------------------- verdict
