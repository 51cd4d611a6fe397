"""Overload and recovery benchmark: real KServe predictor + transformer on 127.0.0.1 (a benchmark, not
a test; issue 15, defects 8 and 9).

Measures, on the release checkpoint by default:
- unloaded latency: one client, sequential requests (p50/p95);
- overload: ``--clients`` (36) concurrent clients for ``--duration`` seconds, each with its own issued
  API key (so the per-client rate limit is not what refuses them), each sending its next request as
  soon as the last one is answered, and honouring Retry-After after a 429/503 (as ``SRClient`` does):
  accepted requests per second, p50/p95 of the accepted requests' latency against the unloaded
  latency, refusals by kind and their Retry-After values, and how fast a refusal comes back;
  ``--baseline`` runs the same overload once more with ``--max-latency-factor 0`` (admission by queue
  length only, the behaviour before) for comparison;
- recovery: with two clients sending, the predictor is SIGKILLed and restarted on the same port: the
  time from its readiness (its /health 200: loaded and warmed up) to the transformer's first 200 and
  to its breaker closing.

Usage:
  python benchmarks/serving_overload.py [--checkpoint DIR] [--clients 36] [--duration 60] [--size 256]
      [--steps 0] [--unloaded 10] [--baseline] [--no-recovery] [--json OUT]
(default OUT: benchmarks/results/serving_overload.json)
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _results import Measurement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving_latency import Proc, aerial, checkpoint_dir, percentile  # noqa: E402

V1 = "/v1/models/hndsr:predict"


def body_for(size: int, steps: int, seed: int) -> dict[str, Any]:
    import base64

    data = base64.b64encode(aerial(size, seed)).decode("ascii")
    return {"instances": [{"image_b64": data, "scale": 4, "steps": steps, "seed": seed}]}


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


def unloaded(url: str, body: dict[str, Any], n: int, key: str) -> list[float]:
    out = []
    with httpx.Client(timeout=600) as http:
        for i in range(n + 1):
            t0 = time.perf_counter()
            r = http.post(url + V1, json=body, headers={"x-api-key": key})
            if r.status_code != 200:
                raise SystemExit(f"unloaded request failed: {r.status_code} {r.text[:300]}")
            if i:  # the first one warms the path up
                out.append(time.perf_counter() - t0)
    return out


def overload(url: str, body: dict[str, Any], keys: list[str], duration_s: float) -> dict[str, Any]:
    stop_at = time.monotonic() + duration_s
    lock = threading.Lock()
    accepted: list[tuple[float, float]] = []  # (finished, latency)
    refused: list[tuple[int, str, float, float]] = []  # (status, kind, retry_after, answer time)
    other: Counter[str] = Counter()

    def client(key: str) -> None:
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = http.post(url + V1, json=body, headers={"x-api-key": key})
                except httpx.HTTPError as exc:
                    with lock:
                        other[type(exc).__name__] += 1
                    time.sleep(1.0)
                    continue
                dt = time.perf_counter() - t0
                if r.status_code == 200:
                    with lock:
                        accepted.append((time.monotonic(), dt))
                    continue
                ra = float(r.headers.get("retry-after", "1"))
                kind = (
                    r.json().get("kind", "")
                    if r.headers.get("content-type", "").startswith("application/json")
                    else ""
                )
                with lock:
                    if r.status_code in (429, 503):
                        refused.append((r.status_code, kind, ra, dt))
                    else:
                        other[f"{r.status_code}:{kind}"] += 1
                time.sleep(min(ra, max(0.0, stop_at - time.monotonic())))

    started = time.monotonic()
    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(client, keys))
    wall = time.monotonic() - started
    latencies = [dt for _, dt in accepted]
    in_window = [dt for t, dt in accepted if t <= stop_at]
    return {
        "clients": len(keys),
        "duration_s": round(duration_s, 1),
        "wall_s": round(wall, 1),
        "accepted": len(accepted),
        "accepted_per_s": round(len(in_window) / duration_s, 3),
        "accepted_latency_s": summary(latencies),
        "refused": dict(Counter(f"{s}:{k}" for s, k, _, _ in refused)),
        "retry_after_s": summary([ra for _, _, ra, _ in refused]),
        "retry_after_values": dict(sorted(Counter(int(ra) for _, _, ra, _ in refused).items())),
        "refusal_answer_s": summary([dt for _, _, _, dt in refused]),
        "other": dict(other),
    }


def recovery(pred: Proc, trans: Proc, body: dict[str, Any], keys: list[str], log: Path) -> dict[str, Any]:
    """SIGKILL the predictor under traffic, restart it on the same port; times from its readiness."""
    stop = threading.Event()
    lock = threading.Lock()
    events: list[tuple[float, int, str]] = []

    def client(key: str) -> None:
        with httpx.Client(timeout=600) as http:
            while not stop.is_set():
                try:
                    r = http.post(trans.url + V1, json=body, headers={"x-api-key": key})
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                kind = "" if r.status_code == 200 else r.json().get("kind", "")
                with lock:
                    events.append((time.monotonic(), r.status_code, kind))
                if r.status_code != 200:
                    time.sleep(0.1)  # a busy loop of fast 503s would only slow the restart down

    threads = [threading.Thread(target=client, args=(k,)) for k in keys[:2]]
    for t in threads:
        t.start()
    time.sleep(3.0)
    killed = time.monotonic()
    pred.proc.kill()
    pred.proc.wait()
    opened = None
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            h = http.get(trans.url + "/health").json()
            if h.get("circuit_breaker") == "OPEN":
                opened = time.monotonic()
                break
            time.sleep(0.1)
        restart = time.monotonic()
        again = Proc(["predictor", *pred_args], log, port=pred.port)  # waits for its /health 200
        ready = time.monotonic()
        closed = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if http.get(trans.url + "/health").json().get("circuit_breaker") == "CLOSED":
                closed = time.monotonic()
                break
            time.sleep(0.05)
        first_ok = None
        while time.monotonic() < deadline and first_ok is None:
            with lock:
                first_ok = next((t for t, code, _ in events if code == 200 and t > ready), None)
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=600)
    kinds = Counter(f"{code}:{kind}" for t, code, kind in events if killed <= t <= (first_ok or t))
    pred.proc, pred.port, pred.url = again.proc, again.port, again.url
    return {
        "breaker_open_after_kill_s": None if opened is None else round(opened - killed, 2),
        "predictor_restart_to_ready_s": round(ready - restart, 2),
        "ready_to_breaker_closed_s": None if closed is None else round(closed - ready, 2),
        "ready_to_first_200_s": None if first_ok is None else round(first_ok - ready, 2),
        "answers_between_kill_and_first_200": dict(kinds),
    }


pred_args: list[str] = []


def main() -> None:
    global pred_args
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the release checkpoint)")
    ap.add_argument("--clients", type=int, default=36)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    ap.add_argument("--size", type=int, default=256, help="input px a side (x4)")
    ap.add_argument("--steps", type=int, default=0, help="diffusion steps (0: deterministic)")
    ap.add_argument("--unloaded", type=int, default=10, help="sequential requests for the unloaded latency")
    ap.add_argument("--max-latency-factor", type=float, default=2.5)
    ap.add_argument("--baseline", action="store_true", help="also run with --max-latency-factor 0 (before)")
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/serving_overload.json"))
    args = ap.parse_args()
    measurement = Measurement()  # the machine, the commit, the load average at the start and the end

    tmp = Path(tempfile.mkdtemp(prefix="hndsr-overload-"))
    ckpt, ckpt_label = checkpoint_dir(args.checkpoint, tmp)
    keys = [f"bench-{i:02d}-{secrets.token_hex(12)}" for i in range(args.clients + 1)]
    keys_file = tmp / "keys.txt"
    keys_file.write_text("".join(f"{k} client-{i:02d}\n" for i, k in enumerate(keys)))
    body = body_for(args.size, args.steps, seed=7)
    pred_args = ["--storage-uri", ckpt, "--device", "cpu"] if not _cuda() else ["--storage-uri", ckpt]
    result: dict[str, Any] = {
        "checkpoint": ckpt_label,
        "device": "cuda" if _cuda() else "cpu",
        "request": {"size": args.size, "scale": 4, "steps": args.steps, "out_px": args.size * 4},
        "runs": [],
    }
    pred = Proc(["predictor", *pred_args], tmp / "predictor.log")
    try:
        factors = [args.max_latency_factor] + ([0.0] if args.baseline else [])
        for factor in factors:
            trans = Proc(
                [
                    "transformer",
                    "--predictor-host",
                    pred.url.removeprefix("http://"),
                    "--api-keys-file",
                    str(keys_file),
                    "--max-latency-factor",
                    str(factor),
                ],
                tmp / f"transformer-{factor}.log",
            )
            try:
                base = unloaded(trans.url, body, args.unloaded, keys[-1])
                run: dict[str, Any] = {"max_latency_factor": factor, "unloaded_latency_s": summary(base)}
                print(f"factor {factor}: unloaded p50 {run['unloaded_latency_s']['p50']} s", flush=True)
                run["overload"] = overload(trans.url, body, keys[: args.clients], args.duration)
                p50 = run["unloaded_latency_s"]["p50"]
                acc = run["overload"]["accepted_latency_s"]
                if p50 and acc["p95"] is not None:
                    run["accepted_p50_over_unloaded"] = round(acc["p50"] / p50, 2)
                    run["accepted_p95_over_unloaded"] = round(acc["p95"] / p50, 2)
                with httpx.Client(timeout=10) as http:
                    run["admission"] = http.get(trans.url + "/health").json().get("admission")
                print(json.dumps(run, indent=1), flush=True)
                ratio, rate = run.get("accepted_p95_over_unloaded"), run["overload"]["accepted_per_s"]
                print(f"factor {factor}: accepted p95 / unloaded p50 = {ratio}x (target <= 3x), {rate}/s")
                if factor == args.max_latency_factor and not args.no_recovery:
                    time.sleep(2.0)  # the overload's last requests drain
                    result["recovery"] = recovery(pred, trans, body, keys, tmp / "predictor.log")
                    print(json.dumps(result["recovery"], indent=1), flush=True)
                result["runs"].append(run)
            finally:
                trans.stop()
    finally:
        pred.stop()
    measurement.write("serving_overload", result, path=args.json)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    main()
