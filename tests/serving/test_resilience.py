"""The predictor dies mid-traffic: the transformer answers 503 with Retry-After, its circuit breaker
opens and says so on /health and /metrics; the predictor comes back on the same port and the service
recovers without restarting the transformer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from servingstack import Server, b64, png_bytes, predictor, transformer, write_checkpoint

pytest.importorskip("kserve")

V1 = "/v1/models/hndsr:predict"


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.timeout(600)  # three server starts: slow on a busy 2-core machine
def test_predictor_killed_then_restarted(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    pred = predictor(tmp_path, ckpt).start()
    trans = transformer(
        tmp_path, pred.url, "--breaker-reset-s", "2", "--rate-limit-rps", "1000", "--rate-limit-burst", "1000"
    ).start()
    body = {"instances": [{"image_b64": b64(png_bytes(180, 180, seed=2)), "scale": 4, "steps": 2}]}
    statuses: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(trans.url + V1, json=body)
                kind = r.json().get("kind", "") if r.status_code != 200 else ""
                statuses.append((r.status_code, r.headers.get("retry-after"), kind))
                if r.status_code != 200:
                    time.sleep(0.05)  # a busy loop of fast 503s would only slow the predictor's restart

    try:
        with httpx.Client(timeout=60) as http:
            assert http.post(trans.url + V1, json=body).status_code == 200
            worker = threading.Thread(target=traffic)
            worker.start()
            time.sleep(1.0)  # requests are in flight
            pred.kill()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "circuit_open" not in {k for _, _, k in statuses}:
                time.sleep(0.1)
            health = http.get(trans.url + "/health")
            assert health.status_code == 503 and "circuit breaker" in health.json()["reason"]
            assert metric(http.get(trans.url + "/metrics").text, "hndsr_circuit_breaker_state") == 2.0
            t0 = time.monotonic()
            r = http.post(trans.url + V1, json=body)
            assert r.status_code == 503 and r.json()["kind"] == "circuit_open"
            assert time.monotonic() - t0 < 0.5 and int(r.headers["retry-after"]) >= 1  # fails fast

            restarted = Server(pred.args, pred.log, port=pred.port).start()  # same address, new process
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (not statuses or statuses[-1][0] != 200):
                    time.sleep(0.2)
                stop.set()
                worker.join(timeout=60)
                assert statuses[-1][0] == 200, statuses[-5:]
                assert http.get(trans.url + "/health").status_code == 200
                assert metric(http.get(trans.url + "/metrics").text, "hndsr_circuit_breaker_state") == 0.0
            finally:
                stop.set()
                restarted.stop()
        codes = {code for code, _, _ in statuses}
        assert codes <= {200, 503}, statuses  # never a 500 or 502 for a dead predictor
        assert all(ra is not None for code, ra, _ in statuses if code == 503)
        kinds = {k for code, _, k in statuses if code == 503}
        assert {"predictor_unavailable", "circuit_open"} <= kinds, kinds
    finally:
        stop.set()
        trans.stop()
        pred.stop()
