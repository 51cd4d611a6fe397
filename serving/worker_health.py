"""The worker's HTTP side: ``/metrics``, ``/health`` (readiness) and ``/live`` (liveness), on a thread
beside the job loop."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.worker import Worker


class HealthServer:
    """``/metrics``, ``/health`` (readiness), ``/live`` (liveness) on a thread."""

    def __init__(self, host: str, port: int, registry: Any) -> None:
        self.worker: Worker | None = None
        self.loading_error: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    body = server.status()
                    self._send(200 if body["ready"] else 503, json.dumps(body).encode(), "application/json")
                elif path == "/live":
                    ok = server.live()
                    self._send(200 if ok else 503, json.dumps({"live": ok}).encode(), "application/json")
                else:
                    msg = {"error": f"no route {path}: use /metrics, /health or /live", "status": 404}
                    self._send(404, json.dumps(msg).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if code == 503:
                    self.send_header("Retry-After", "5")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="worker-http", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def status(self) -> dict[str, Any]:
        if self.worker is None:
            reason = self.loading_error or "loading the model"
            return {"status": "degraded", "ready": False, "reason": reason}
        return self.worker.status()

    def live(self) -> bool:
        if self.worker is None:
            return self.loading_error is None
        return time.monotonic() - self.worker.last_tick < max(60.0, 5 * self.worker.settings.maintenance_s)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
