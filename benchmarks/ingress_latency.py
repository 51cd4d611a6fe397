"""Ingress benchmark: what nginx (serving/ingress.py) costs and what its rate limit lets through.

Starts the real predictor and transformer on the release checkpoint (or --checkpoint) and nginx in
front of the transformer, all on 127.0.0.1, then measures
- latency of a 512x512 -> 2048x2048 (x4) request on the deterministic path, direct (HTTP to the
  transformer) and through nginx (HTTPS, TLS session reused by a keep-alive client), interleaved so
  both see the same machine: p50/p95 of each and of the paired difference (the latency the proxy adds);
- the same for a small request (GET of the model's metadata), where nothing but the hop counts;
- the rate limit observed: one client sending as fast as it can for --rate-seconds against the default
  limit (the transformer's 10 req/s per client, burst 20): requests admitted at once, the sustained
  admitted rate, and the 429s (with their Retry-After).

Usage:
  python benchmarks/ingress_latency.py [--checkpoint DIR] [--repeats 10] [--small-repeats 200]
      [--rate-seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import Measurement  # noqa: E402
from serving_latency import Proc, aerial, checkpoint_dir, free_port, percentile  # noqa: E402

from serving.ingress import IngressConfig, NginxIngress  # noqa: E402
from serving.validation import Limits  # noqa: E402

V1 = "/v1/models/hndsr:predict"


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2), "n": len(ms)}


def paired(
    direct: httpx.Client,
    proxied: httpx.Client,
    urls: tuple[str, str],
    send: Any,
    repeats: int,
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Alternate direct and proxied requests (which goes first alternates too); latencies in ms."""
    times: dict[str, list[float]] = {"direct": [], "nginx": []}
    for i in range(repeats):
        order = [("direct", direct, urls[0]), ("nginx", proxied, urls[1])]
        for name, client, url in order if i % 2 == 0 else order[::-1]:
            time.sleep(pause_s)
            t0 = time.perf_counter()
            r = send(client, url)
            times[name].append((time.perf_counter() - t0) * 1000.0)
            if r.status_code != 200:
                raise SystemExit(f"{name}: {r.status_code} {r.text[:300]}")
    added = [b - a for a, b in zip(times["direct"], times["nginx"], strict=True)]
    return {"direct": summary(times["direct"]), "nginx": summary(times["nginx"]), "added": summary(added)}


def rate_limit(url: str, client: httpx.Client, seconds: float) -> dict[str, Any]:
    """One client, back to back, on a rate-limited path that costs the service nothing."""
    time.sleep(3.0)  # a full bucket to start from
    events: list[tuple[float, int]] = []
    retry_after: set[str] = set()
    t0 = time.perf_counter()
    while (now := time.perf_counter() - t0) < seconds:
        r = client.get(url + "/v1/models/hndsr")
        events.append((now, r.status_code))
        if r.status_code == 429:
            retry_after.add(r.headers.get("retry-after", "missing"))
    admitted = [t for t, code in events if code == 200]
    first_refusal = next((t for t, code in events if code == 429), seconds)
    burst = sum(1 for t in admitted if t < first_refusal)
    later = [t for t in admitted if t >= first_refusal]
    span = seconds - first_refusal
    return {
        "requests": len(events),
        "offered_per_s": round(len(events) / seconds, 1),
        "admitted": len(admitted),
        "admitted_before_first_429": burst,
        "sustained_admitted_per_s": round(len(later) / span, 2) if span > 0 else float("nan"),
        "refused_429": sum(1 for _, code in events if code == 429),
        "other": sorted({code for _, code in events} - {200, 429}),
        "retry_after": sorted(retry_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10, help="512 px requests per path")
    parser.add_argument("--small-repeats", type=int, default=200)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/ingress_latency.json"
    )
    args = parser.parse_args()
    measurement = Measurement()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tmp = Path(tempfile.mkdtemp(prefix="hndsr-ingress-bench-"))
    ckpt, label = checkpoint_dir(args.checkpoint, tmp)
    results: dict[str, Any] = {"checkpoint": label, "cpu_count": os.cpu_count()}
    results["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    pred = Proc(["predictor", "--storage-uri", ckpt], tmp / "predictor.log")
    trans = proxy = None
    try:
        trans = Proc(["transformer", "--predictor-host", f"127.0.0.1:{pred.port}"], tmp / "transformer.log")
        config = IngressConfig(
            upstream=f"127.0.0.1:{trans.port}", https_port=free_port(), http_port=free_port()
        )
        proxy = NginxIngress(config, tmp / "nginx").start()
        results["ingress"] = {
            "rate_per_s": config.rate_per_s,
            "burst": config.burst,
            "max_body_bytes": config.max_body_bytes,
            "service_max_body_bytes": Limits().max_body_bytes,
        }
        image_b64 = base64.b64encode(aerial(args.size, 1)).decode()
        payload = json.dumps({"instances": [{"image_b64": image_b64, "scale": 4, "steps": 0}]}).encode()
        results["request_bytes"] = len(payload)

        def post(client: httpx.Client, url: str) -> httpx.Response:
            return client.post(url + V1, content=payload, headers={"content-type": "application/json"})

        def small(client: httpx.Client, url: str) -> httpx.Response:
            return client.get(url + "/v1/models/hndsr")

        verify = str(proxy.certificate)
        with httpx.Client(timeout=600) as direct, httpx.Client(timeout=600, verify=verify) as proxied:
            urls = (trans.url, proxy.url)
            r = post(proxied, proxy.url)  # warm-up, and the answer's size
            results["response_bytes"] = len(r.content)
            out = r.json()["predictions"][0]
            results["output"] = f"{out['width']}x{out['height']}, {out['tiles']} tiles, steps {out['steps']}"
            print(f"{label}: {args.size} px x4 -> {results['output']}", flush=True)
            results[f"x4_{args.size}px_deterministic"] = paired(direct, proxied, urls, post, args.repeats)
            # Spaced so that the small requests stay under the rate limit (10/s per client).
            results["small_get"] = paired(direct, proxied, urls, small, args.small_repeats, pause_s=0.06)
            results["rate_limit"] = rate_limit(proxy.url, proxied, args.rate_seconds)
    finally:
        for p in (proxy, trans, pred):
            if p is not None:
                p.stop()
    results["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]

    print(json.dumps(results, indent=2))
    big = results[f"x4_{args.size}px_deterministic"]
    print(
        f"\n{args.size}x{args.size} x4 deterministic ({args.repeats} each, interleaved): "
        f"direct p50 {big['direct']['p50_ms']:.0f} ms p95 {big['direct']['p95_ms']:.0f} ms; "
        f"through nginx p50 {big['nginx']['p50_ms']:.0f} ms p95 {big['nginx']['p95_ms']:.0f} ms; "
        f"added p50 {big['added']['p50_ms']:.1f} ms p95 {big['added']['p95_ms']:.1f} ms"
    )
    s = results["small_get"]
    print(f"small GET: added p50 {s['added']['p50_ms']:.2f} ms p95 {s['added']['p95_ms']:.2f} ms")
    rl = results["rate_limit"]
    print(
        f"rate limit ({config.rate_per_s:g}/s, burst {config.burst}): offered {rl['offered_per_s']}/s, "
        f"{rl['admitted_before_first_429']} admitted at once, then {rl['sustained_admitted_per_s']}/s; "
        f"{rl['refused_429']} x 429, Retry-After {rl['retry_after']}"
    )
    measurement.write("ingress_latency", results, path=args.json)


if __name__ == "__main__":
    main()
