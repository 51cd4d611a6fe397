"""Alerts reach people, end to end on real servers on 127.0.0.1: a predictor's metrics (the project's
ServingMetrics and drift registry, served over HTTP) -> Prometheus evaluating the shipped rules ->
Alertmanager running the shipped monitoring/alertmanager.yml (only its timings shortened and its
secret files and PagerDuty URL pointed here) -> a local receiver that records the real PagerDuty
Events v2 and Slack webhook payloads.

Checked: the breaker-open page arrives with summary, runbook, revision and model version; the error
ratio it causes is inhibited and never arrives; a warning reaches the serving chat; the resolved
notifications arrive once the condition clears."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from promstack import Process, alerts, fast_rules, start_alertmanager, start_prometheus

from monitoring.drift.detection import DriftResult
from monitoring.drift.pushgateway import push_registry
from serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "hndsr-alerts.yml"
CONFIG = ROOT / "monitoring" / "alertmanager.yml"
SECRETS = "/etc/alertmanager/secrets/"
ROUTING_KEY = "e2e-routing-key"
# A canary predictor: its metrics carry the revision (K_REVISION) and the model version it loaded.
CANARY = {"revision": "hndsr-predictor-00002", "model_version": "0.2.0"}
WAIT_S = 90


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Receiver:
    """Records every POST body by path; ``wait_for`` blocks until a recorded body matches."""

    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.changed:
                    receiver.got.append((self.path, body))
                    receiver.changed.notify_all()
                self.send_response(202)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def wait_for(self, match: Callable[[str, dict[str, Any]], bool]) -> tuple[str, dict[str, Any]]:
        with self.changed:
            found = self.changed.wait_for(lambda: [g for g in self.got if match(*g)], timeout=WAIT_S)
        assert found, f"no such notification in {WAIT_S} s; got {self.got}"
        return found[0]

    def mentions(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        with self.changed:
            return [g for g in self.got if alertname in json.dumps(g[1])]


class Predictor:
    """A predictor's /metrics as the project exports them; ``failing`` makes each scrape see 503s."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ServingMetrics(self.registry, revision=CANARY["revision"])
        self.breaker = 0.0
        self.failing = False
        self.metrics.bind(breaker_state=lambda: self.breaker, model_version=lambda: CANARY["model_version"])
        self.metrics.vram_total.set_function(lambda: 16e9)  # a 16 GB GPU
        self.metrics.vram.set(2e9)
        # A healthy hourly drift job that has just run: the drift alerts stay quiet.
        self.drift = push_registry(
            DriftResult(state="ok", window_size=100, reference_size=5000, drift_share=0.0), schedule_s=3600
        )

    def scrape(self) -> bytes:
        # Traffic between scrapes: mostly 503s while failing, else successes.
        for _ in range(10 if self.failing else 0):
            self.metrics.request(503)
        self.metrics.request(200)
        return generate_latest(self.registry) + generate_latest(self.drift)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        predictor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = predictor.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _test_config(tmp: Path, receiver_url: str) -> Path:
    """The shipped config with its secret files under ``tmp``, PagerDuty at the local receiver, and
    second-long grouping timers (the shipped ones are 30 s / 5 min)."""
    doc = yaml.safe_load(CONFIG.read_text().replace(SECRETS, f"{tmp}/secrets/"))
    doc.setdefault("global", {})["pagerduty_url"] = f"{receiver_url}/pagerduty"
    for route in [doc["route"], *doc["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
        route["repeat_interval"] = "1h"  # no repeats within the test
    files = {
        "hndsr-alertmanager-pagerduty/routing-key": ROUTING_KEY,
        "hndsr-alertmanager-slack/serving-webhook-url": f"{receiver_url}/slack/serving",
        "hndsr-alertmanager-slack/data-webhook-url": f"{receiver_url}/slack/data",
    }
    for name, value in files.items():
        path = tmp / "secrets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    config = tmp / "alertmanager.yml"
    config.write_text(yaml.safe_dump(doc))
    return config


@dataclass
class Stack:
    predictor: Predictor
    receiver: Receiver
    prometheus: Process
    alertmanager: Process


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    receiver, predictor = Receiver(), Predictor()
    servers = [_serve(receiver.handler()), _serve(predictor.handler())]
    receiver_url = f"http://127.0.0.1:{servers[0].server_port}"
    try:
        am = start_alertmanager(tmp_path, _test_config(tmp_path, receiver_url))
        try:
            prometheus = start_prometheus(
                tmp_path,
                fast_rules(RULES, tmp_path),
                [f"127.0.0.1:{servers[1].server_port}"],
                job="predictor",
                alertmanager=am.url.removeprefix("http://"),
            )
            try:
                yield Stack(predictor, receiver, prometheus, am)
            finally:
                prometheus.stop()
        finally:
            am.stop()
    finally:
        for server in servers:
            server.shutdown()


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def _am_alert(am: Process, name: str) -> list[dict[str, Any]]:
    params = {"filter": f'alertname="{name}"'}
    return list(httpx.get(am.url + "/api/v2/alerts", params=params, timeout=5).json())


def _firing_in_prometheus(stack: Stack, name: str) -> bool:
    return any(a["labels"]["alertname"] == name and a["state"] == "firing" for a in alerts(stack.prometheus))


def _pagerduty(action: str, name: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda path, body: (
        path == "/pagerduty" and body.get("event_action") == action and name in body["payload"]["summary"]
    )


def _slack(channel: str, status: str, name: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda path, body: (
        path == f"/slack/{channel}" and body["attachments"][0]["title"].startswith(f"[{status}] {name}:")
    )


def test_page_inhibition_chat_and_resolution(stack: Stack) -> None:
    receiver, predictor = stack.receiver, stack.predictor
    runbook = "monitoring/RUNBOOK.md#hndsrcircuitbreakeropen"

    # The breaker opens: a page with what the person paged needs.
    predictor.breaker = 2
    _, page = receiver.wait_for(_pagerduty("trigger", "HNDSRCircuitBreakerOpen"))
    assert page["routing_key"] == ROUTING_KEY
    assert page["payload"]["severity"] == "critical"
    assert page["payload"]["summary"].endswith("The circuit breaker of predictor is open: requests get 503")
    details = page["payload"]["custom_details"]
    assert details["runbook"] == runbook and details["job"] == "predictor"
    assert details["revision"] == "hndsr-predictor-00002" and details["model_version"] == "0.2.0"
    assert page["links"] == [{"href": runbook, "text": "Runbook"}]

    # The 503s it causes raise the error ratio, which the open breaker inhibits.
    predictor.failing = True
    _until(lambda: _firing_in_prometheus(stack, "HNDSRHighErrorRatio"))
    _until(
        lambda: any(a["status"]["inhibitedBy"] for a in _am_alert(stack.alertmanager, "HNDSRHighErrorRatio"))
    )

    # A warning now: it goes to the serving chat. Its group was formed after the error ratio's, so by
    # the time it arrives the error ratio would have been sent had it not been inhibited.
    predictor.metrics.vram.set(15.5e9)
    _, chat = receiver.wait_for(_slack("serving", "FIRING", "HNDSRGPUMemoryNearLimit"))
    attachment = chat["attachments"][0]
    assert chat["channel"] == "#hndsr-serving"
    assert "predictor uses over 90% of its GPU memory" in attachment["title"]
    assert "runbook: monitoring/RUNBOOK.md#hndsrgpumemorynearlimit" in attachment["text"]
    assert "revision: hndsr-predictor-00002, model version: 0.2.0" in attachment["text"]
    assert receiver.mentions("HNDSRHighErrorRatio") == []

    # The condition clears: the 503s stop and successes dilute the 5-minute ratio below 5%, then the
    # breaker closes and the memory falls. Both resolved notifications arrive; the inhibited alert
    # never produced one.
    predictor.failing = False
    predictor.metrics.requests.labels(code="200", model_version=CANARY["model_version"]).inc(1e6)
    _until(lambda: not _firing_in_prometheus(stack, "HNDSRHighErrorRatio"))
    predictor.breaker = 0
    predictor.metrics.vram.set(2e9)
    _, resolved = receiver.wait_for(_pagerduty("resolve", "HNDSRCircuitBreakerOpen"))
    assert resolved["dedup_key"] == page["dedup_key"]
    receiver.wait_for(_slack("serving", "RESOLVED", "HNDSRGPUMemoryNearLimit"))
    assert receiver.mentions("HNDSRHighErrorRatio") == []
    # Nothing went to the data team or to the unrouted fallback.
    assert {path for path, _ in receiver.got} == {"/pagerduty", "/slack/serving"}
    assert not any("[UNROUTED]" in json.dumps(body) for _, body in receiver.got)
