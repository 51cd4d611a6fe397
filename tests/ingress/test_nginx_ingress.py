"""The nginx ingress (serving/ingress.py, ingress/nginx.conf.template), for real: Debian's nginx on
127.0.0.1 and free ports in front of a real transformer and predictor (tiny model), all started and
stopped here. TLS round trips, HTTP -> HTTPS redirects, per-client rate limiting, the body limit and
request buffering are each observed from the outside and, where it matters, from the transformer's
own metrics and health (what reached Python)."""

from __future__ import annotations

import math
import re
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from servingstack import Server, b64, free_port, png_bytes, predictor, transformer, write_checkpoint
from tooling import needs_tool

pytest.importorskip("kserve")

from serving.ingress import IngressConfig, NginxIngress
from serving.metrics import sample_value
from serving.transformer_settings import TransformerSettings
from serving.validation import Limits

pytestmark = needs_tool("nginx")

V1 = "/v1/models/hndsr:predict"
V2 = "/v2/models/hndsr/infer"


def ingress(tmp: Path, upstream: Server, name: str, **options: float) -> NginxIngress:
    config = IngressConfig(
        upstream=upstream.url.removeprefix("http://"),
        https_port=free_port(),
        http_port=free_port(),
        **options,  # type: ignore[arg-type]
    )
    return NginxIngress(config, tmp / name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, NginxIngress]]:
    """predictor -> transformer (one request processed at a time, its own rate limit and its
    admission by expected wait out of the way: these tests are about nginx) -> nginx with a generous
    rate limit; the burst test starts its own, stricter nginx."""
    tmp = tmp_path_factory.mktemp("ingress")
    pred = predictor(tmp, write_checkpoint(tmp / "ckpt")).start()
    trans = None
    proxy = None
    try:
        args = ("--rate-limit-rps", "1000", "--rate-limit-burst", "1000", "--max-concurrency", "1")
        args += ("--max-latency-factor", "0")
        trans = transformer(tmp, pred.url, *args).start()
        proxy = ingress(tmp, trans, "nginx", rate_per_s=100, burst=100).start()
        yield trans, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        if trans is not None:
            trans.stop()
        pred.stop()


def tls_client(proxy: NginxIngress, **kw: object) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(proxy.certificate)), timeout=120, **kw)  # type: ignore[arg-type]


def v1_body(h: int = 32, w: int = 40, scale: float = 2) -> dict[str, object]:
    return {"instances": [{"image_b64": b64(png_bytes(h, w, seed=5)), "scale": scale, "steps": 0}]}


def counted(trans: Server, code: int) -> float:
    """hndsr_requests_total{code} on the transformer: what reached Python."""
    text = httpx.get(trans.url + "/metrics", timeout=30).text
    try:
        return sample_value(text, "hndsr_requests_total", code=str(code))
    except KeyError:
        return 0.0


# ------------------------------------------------------------------------------------ configuration


def test_rendered_config_takes_its_limits_from_the_serving_configuration(tmp_path: Path) -> None:
    proxy = NginxIngress(
        IngressConfig(upstream="127.0.0.1:9", https_port=free_port(), http_port=free_port()), tmp_path
    )
    proxy.write_config()
    proxy.check()  # nginx -t
    conf = proxy.conf_path.read_text()
    settings = TransformerSettings()
    assert f"client_max_body_size {Limits().max_body_bytes};" in conf
    assert f"proxy_read_timeout {math.ceil(settings.timeout_s)}s;" in conf
    assert f"rate={round(settings.rate_limit_rps * 60)}r/m;" in conf
    assert f"burst={settings.rate_limit_burst} nodelay;" in conf
    assert "proxy_request_buffering on;" in conf
    assert "proxy_set_header X-Request-ID $request_id;" in conf
    assert str(tmp_path.resolve()) + "/client_body;" in conf  # nothing written outside the prefix
    assert "${" not in conf and "$$" not in conf


# ------------------------------------------------------------------------------------ TLS round trips


def test_https_round_trip_through_nginx_transformer_and_predictor(stack: tuple[Server, NginxIngress]) -> None:
    trans, proxy = stack
    with tls_client(proxy) as http:
        r = http.post(proxy.url + V1, json=v1_body(32, 40, scale=4))
        assert r.status_code == 200, r.text
        out = r.json()["predictions"][0]
        assert (out["width"], out["height"], out["format"]) == (160, 128, "png")
        request_id = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)

        r2 = http.post(
            proxy.url + V2,
            json={
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(png_bytes(24, 24))]}
                ],
                "parameters": {"scale": 2, "steps": 0},
            },
        )
        assert r2.status_code == 200, r2.text
        assert r2.json()["id"] == r2.headers["x-request-id"]  # the ingress's id names the v2 answer
        assert http.get(proxy.url + "/health").json()["status"] == "ready"
        assert http.get(proxy.url + "/metrics").status_code == 404  # scraped from the servers, not here

    # The transformer logged the same id.
    deadline = time.monotonic() + 10
    while request_id not in trans.log_tail(200_000) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"request {request_id}: 1 image(s)" in trans.log_tail(200_000)


def test_the_certificate_is_checked_by_clients(stack: tuple[Server, NginxIngress]) -> None:
    _, proxy = stack
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(proxy.url + "/health", timeout=30)  # the system CAs don't know a self-signed cert
    context = ssl.create_default_context(cafile=str(proxy.certificate))
    sock = socket.create_connection(("127.0.0.1", proxy.config.https_port), timeout=30)
    with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:  # checks the 127.0.0.1 SAN
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_is_redirected_to_https(stack: tuple[Server, NginxIngress]) -> None:
    _, proxy = stack
    https_port = proxy.config.https_port
    with httpx.Client(timeout=30) as http:
        r = http.post(proxy.http_url + V1 + "?x=1", json=v1_body())
        assert r.status_code == 308  # keeps the method and body, unlike 301
        assert r.headers["location"] == f"https://127.0.0.1:{https_port}{V1}?x=1"
        r = http.get(f"http://127.0.0.1:{https_port}/health")  # plain HTTP to the TLS port
        assert r.status_code == 308
        assert r.headers["location"] == f"https://127.0.0.1:{https_port}/health"
    with tls_client(proxy, follow_redirects=True) as http:
        r = http.post(proxy.http_url + V1, json=v1_body())
        assert r.status_code == 200, r.text
        assert r.url.scheme == "https"


# ------------------------------------------------------------------------------------ limits


def test_a_burst_above_the_limit_gets_429_from_nginx_and_the_service_stays_healthy(
    stack: tuple[Server, NginxIngress], tmp_path: Path
) -> None:
    trans, _ = stack
    strict = ingress(tmp_path, trans, "strict", rate_per_s=1, burst=3).start()
    try:
        before = counted(trans, 429), counted(trans, 200)
        body = v1_body(16, 16)
        with tls_client(strict) as http, ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: http.post(strict.url + V1, json=body), range(12)))
        codes = [r.status_code for r in responses]
        limited = [r for r in responses if r.status_code == 429]
        # 1 + burst 3 pass at once; one more token may refill while the 12 arrive.
        assert 4 <= codes.count(200) <= 5 and len(limited) == 12 - codes.count(200), codes
        for r in limited:
            assert r.headers["retry-after"] == "1"
            assert r.json()["kind"] == "rate_limited" and "ingress" in r.json()["error"]
        # The 429s came from nginx: the transformer counted only the admitted requests.
        assert counted(trans, 429) == before[0]
        assert counted(trans, 200) == before[1] + codes.count(200)
        with tls_client(strict) as http:
            assert http.get(strict.url + "/health").status_code == 200  # probes are not limited
            time.sleep(1.2)  # one token back
            assert http.post(strict.url + V1, json=body).status_code == 200
        assert httpx.get(trans.url + "/health", timeout=30).json()["status"] == "ready"
        assert "limiting requests" in strict.log_tail(20_000)
    finally:
        strict.stop()


def test_a_25_mb_body_gets_413_from_nginx_before_python(stack: tuple[Server, NginxIngress]) -> None:
    trans, proxy = stack
    before = counted(trans, 413)
    body = b"x" * (25 * 2**20)
    with tls_client(proxy) as http:
        r = http.post(proxy.url + V1, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["kind"] == "payload_too_large" and "20 MB" in r.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: nginx counts while reading
            for i in range(0, len(body), 2**20):
                yield body[i : i + 2**20]

        r = http.post(proxy.url + V1, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
    assert counted(trans, 413) == before
    with tls_client(proxy) as http:  # just under the limit passes nginx and meets the service's checks
        r = http.post(proxy.url + V1, content=b"{" + b" " * (19 * 2**20) + b"}")
        assert r.status_code == 400 and r.json()["kind"] == "bad_request", r.text


def test_slow_uploads_do_not_hold_the_transformer(stack: tuple[Server, NginxIngress]) -> None:
    """The transformer processes one request at a time here; two clients trickling their bodies would
    hold it if nginx streamed them. Buffered, it never sees them until they are complete."""
    trans, proxy = stack
    payload = httpx.Request("POST", "/", json=v1_body(24, 24)).content
    context = ssl.create_default_context(cafile=str(proxy.certificate))
    slow: list[ssl.SSLSocket] = []
    try:
        for _ in range(2):
            sock = context.wrap_socket(
                socket.create_connection(("127.0.0.1", proxy.config.https_port), timeout=60),
                server_hostname="127.0.0.1",
            )
            head = (
                f"POST {V1} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            )
            sock.sendall(head.encode() + payload[:100])  # ... and then nothing for a while
            slow.append(sock)
        time.sleep(1.0)
        health = httpx.get(trans.url + "/health", timeout=30).json()
        assert (health["inflight"], health["queue_depth"]) == (0, 0), health

        with tls_client(proxy) as http:
            t0 = time.monotonic()
            r = http.post(proxy.url + V1, json=v1_body(24, 24))
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < 60

        # A slow client that finishes is served normally.
        slow[0].sendall(payload[100:])
        answer = _read_http_response(slow[0])
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    finally:
        for sock in slow:
            sock.close()


def _read_http_response(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: (\d+)", head, re.I)
        if m and len(body) >= int(m.group(1)):
            break
    return data
