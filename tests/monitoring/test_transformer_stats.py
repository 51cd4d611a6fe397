"""Real ``hndsr serve`` processes: the transformer records one statistics line per served image (no
pixels), and exports the dropped-records counter."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
from servingstack import b64, png_bytes, predictor, transformer, write_checkpoint

from monitoring.features import DRIFT_FEATURES


def test_transformer_records_request_statistics(tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    pred = predictor(tmp_path, write_checkpoint(tmp_path / "ckpt")).start()
    try:
        trans = transformer(tmp_path, pred.url, "--request-stats", str(stats)).start()
        try:
            url = f"{trans.url}/v1/models/hndsr:predict"
            for seed in range(3):
                body = {"instances": [{"image_b64": b64(png_bytes(40, 48, seed)), "scale": 2, "steps": 0}]}
                assert httpx.post(url, json=body, timeout=120).status_code == 200
            bad = {"instances": [{"image_b64": b64(png_bytes(40, 48)), "scale": 9}]}
            assert httpx.post(url, json=bad, timeout=60).status_code == 422  # refused before decoding
            deadline = time.monotonic() + 30
            records: list[dict] = []
            while time.monotonic() < deadline and len(records) < 3:
                records = [
                    orjson.loads(x) for f in stats.glob("*.jsonl") for x in f.read_bytes().splitlines()
                ]
                time.sleep(0.2)
            assert len(records) == 3
            assert all(
                r["scale"] == 2 and r["steps"] == 0 and (r["height"], r["width"]) == (40, 48) for r in records
            )
            assert set(DRIFT_FEATURES) <= set(records[0])
            assert (
                max(len(line) for f in stats.glob("*.jsonl") for line in f.read_bytes().splitlines()) < 1000
            )
            metrics = httpx.get(f"{trans.url}/metrics", timeout=10).text
            assert "# TYPE hndsr_request_stats_dropped_total counter" in metrics  # exported before any drop
        finally:
            trans.stop()
    finally:
        pred.stop()
