"""Real prometheus-pushgateway, prometheus and prometheus-alertmanager (Debian packages) on 127.0.0.1,
free ports, started and stopped by the fixture that needs them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from servingstack import free_port
from tooling import require_tool

READY_TIMEOUT_S = 60


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, args: list[str], port: int, tmp: Path, ready: str) -> Process:
    binary = require_tool(name)
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    p = Process(name, proc, f"http://127.0.0.1:{port}", log)
    try:
        p.wait_ready(ready)
    except BaseException:
        p.stop()
        raise
    return p


def start_pushgateway(tmp: Path) -> Process:
    port = free_port()
    return start("prometheus-pushgateway", [f"--web.listen-address=127.0.0.1:{port}"], port, tmp, "/-/ready")


def fast_rules(rules: Path, tmp: Path) -> Path:
    """The shipped rules with ``for:`` cut to 1 s (the shipped values are tested by promtool)."""
    doc = yaml.safe_load(rules.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start_prometheus(
    tmp: Path,
    rule_file: Path,
    targets: list[str],
    *,
    job: str = "pushgateway",
    target_labels: dict[str, str] | None = None,
    alertmanager: str | None = None,
) -> Process:
    """Scrapes ``targets`` (as ``job``, with ``target_labels``) every second, evaluates ``rule_file``
    every second and sends its alerts to ``alertmanager`` (host:port) when given."""
    port = free_port()
    config = tmp / "prometheus.yml"
    static = {"targets": targets, "labels": target_labels or {}}
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rule_file}']\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        "    honor_labels: true\n"
        f"    static_configs: [{json.dumps(static)}]\n"
        + (
            f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{alertmanager}']}}]}}]}}\n"
            if alertmanager
            else ""
        )
    )
    args = [
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return start("prometheus", args, port, tmp, "/-/ready")


def start_alertmanager(tmp: Path, config: Path) -> Process:
    """Alone (no cluster gossip port), its notification log and silences under ``tmp``."""
    port = free_port()
    args = [
        f"--config.file={config}",
        f"--storage.path={tmp / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    return start("prometheus-alertmanager", args, port, tmp, "/-/ready")


def alerts(prometheus: Process) -> list[dict[str, Any]]:
    body = httpx.get(prometheus.url + "/api/v1/alerts", timeout=5).json()
    return list(body["data"]["alerts"])


def query(prometheus: Process, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=5).json()
    return list(body["data"]["result"])
