"""The Grafana dashboard as a person reads it (issue 19): the canary row shows each serving alert's own
expression per job, revision and model version with the alert's threshold as a line; one unit per
panel; worker and queue panels; and, on real servers scraped by a real Prometheus, every hndsr_*
sample carries ``revision`` and ``model_version``, every dashboard query parses, and the quality
proxy is a number, never NaN."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promstack import Process, query, start
from servingstack import Server, b64, free_port, png_bytes, predictor, transformer, write_checkpoint
from tooling import needs_tool

from monitoring.drift.settings import DriftSettings
from monitoring.drift.stattests import DEFAULT_STATTEST_THRESHOLDS, WASSERSTEIN_KS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "hndsr-alerts.yml"
DASHBOARD = ROOT / "monitoring" / "dashboards" / "hndsr.json"
README = ROOT / "README.md"
CONDITION = re.compile(r"^(?P<expr>.*\S)\s*(?P<op>>|<|==)\s*(?P<value>\d+(?:\.\d+)?)$", re.S)
PREDICTOR_REVISION = "hndsr-predictor-00002"
TRANSFORMER_REVISION = "hndsr-transformer-00001"


def _groups() -> dict[str, dict[str, dict[str, Any]]]:
    doc = yaml.safe_load(RULES.read_text())
    return {g["name"]: {r["alert"]: r for r in g["rules"]} for g in doc["groups"]}


def _alerts() -> dict[str, dict[str, Any]]:
    return {name: rule for group in _groups().values() for name, rule in group.items()}


def _condition(rule: dict[str, Any]) -> tuple[str, str, float] | None:
    """(expression, operator, threshold) of a rule compared with a constant; None otherwise."""
    m = CONDITION.match(" ".join(rule["expr"].split()))
    return (m["expr"], m["op"], float(m["value"])) if m else None


def _panels() -> list[dict[str, Any]]:
    return sorted(
        json.loads(DASHBOARD.read_text())["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])
    )


def _graphs() -> list[dict[str, Any]]:
    return [p for p in _panels() if p["type"] != "row"]


def _canary_row() -> list[dict[str, Any]]:
    """The panels under the first row, up to the next."""
    panels = _panels()
    assert panels[0]["type"] == "row" and "canary" in panels[0]["title"].lower(), panels[0]["title"]
    out = []
    for p in panels[1:]:
        if p["type"] == "row":
            break
        out.append(p)
    return out


def _without_variables(expr: str) -> str:
    """The expression without the dashboard's $job / $revision matchers."""
    expr = re.sub(r',?\s*(job|revision)=~"\$(job|revision)"', "", expr)
    expr = re.sub(r"\{\s*,\s*", "{", expr).replace("{}", "")
    return " ".join(expr.split())


def _alert_of(panel: dict[str, Any]) -> str | None:
    m = re.match(r"Alert (HNDSR\w+):", panel.get("description", ""))
    return m[1] if m else None


def _threshold_lines(panel: dict[str, Any]) -> list[float]:
    defaults = panel["fieldConfig"]["defaults"]
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") == "off":
        return []
    return [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]


def _reads(panel: dict[str, Any]) -> set[str]:
    return {n for t in panel["targets"] for n in re.findall(r"\bhndsr_\w+", t["expr"])}


# ---------------------------------------------------------------------------------------- static


def test_canary_row_is_each_serving_alert_per_revision_with_its_threshold() -> None:
    row = _canary_row()
    serving = _groups()["hndsr-serving"]
    assert sorted(a for p in row if (a := _alert_of(p))) == sorted(serving)
    for panel in row:
        rule = serving[_alert_of(panel) or ""]
        cond = _condition(rule)
        assert cond is not None, rule["alert"]
        expr, _, value = cond
        (target,) = panel["targets"]
        # The panel plots exactly what the alert compares with its threshold...
        assert _without_variables(target["expr"]) == expr, (panel["title"], target["expr"], expr)
        # ...one series per job, revision and model version, named so...
        assert all(
            f"{{{{{label}}}}}" in target["legendFormat"] for label in ("job", "revision", "model_version")
        )
        # ...and the threshold is the line.
        assert _threshold_lines(panel) == [value], panel["title"]


def test_readme_canary_procedure_points_at_the_row_and_names_its_alerts() -> None:
    text = README.read_text()
    procedure = text[text.index("**Canary procedure.**") :]
    procedure = procedure[: procedure.index("\n\n**", 1)]
    # The procedure names the row as the dashboard titles it.
    assert "Canary vs stable" in procedure and _panels()[0]["title"].startswith("Canary vs stable")
    assert set(_groups()["hndsr-serving"]) <= set(re.findall(r"HNDSR\w+", procedure))


def test_every_threshold_line_is_an_alert_or_drift_threshold() -> None:
    drift = DriftSettings()
    by_metric = {
        "hndsr_drift_share": drift.drift_share,
        "hndsr_drift_feature_pvalue": drift.threshold,
        "hndsr_drift_feature_score": DEFAULT_STATTEST_THRESHOLDS[WASSERSTEIN_KS],
    }
    alerts = _alerts()
    checked = 0
    for panel in _graphs():
        lines = _threshold_lines(panel)
        name = _alert_of(panel)
        if name is not None:
            cond = _condition(alerts[name])
            # A constant threshold is drawn; one that is another series (drift staleness) is plotted.
            assert lines == ([cond[2]] if cond else []), (panel["title"], lines)
            checked += bool(lines)
        elif lines:
            (metric,) = _reads(panel)
            assert lines == [by_metric[metric]], (panel["title"], lines)
            checked += 1
    assert checked >= 10


def test_one_unit_per_panel_and_p_values_on_a_log_axis() -> None:
    for panel in _graphs():
        field = panel["fieldConfig"]
        assert isinstance(field["defaults"].get("unit"), str) and field["defaults"]["unit"], panel["title"]
        for override in field.get("overrides", []):
            assert all(p["id"] != "unit" for p in override["properties"]), panel["title"]
        # A ratio beside a count or a rate would need a second unit.
        ratios = {"/" in t["expr"] and "time()" not in t["expr"] for t in panel["targets"]}
        assert len(ratios) == 1, panel["title"]
        # What a query plots fixes the unit: every such target of a panel agrees with the panel's.
        for target in panel["targets"]:
            expr = target["expr"]
            for pattern, unit in _UNIT_OF:
                if re.search(pattern, expr):
                    assert field["defaults"]["unit"] == unit, (panel["title"], expr, unit)
                    break
    (pvalues,) = [p for p in _graphs() if "hndsr_drift_feature_pvalue" in _reads(p)]
    assert pvalues["fieldConfig"]["defaults"]["custom"]["scaleDistribution"] == {"type": "log", "log": 10}


_UNIT_OF = [  # (what the expression computes, its unit), first match wins
    (r"histogram_quantile\(.*_seconds_bucket", "s"),
    (r"^time\(\) - |_schedule_seconds", "s"),
    (r"hndsr_requests_total.*/", "percentunit"),
    (r"_bytes\{[^}]*\} /", "percentunit"),
    (r"rate\(hndsr_requests_total", "reqps"),
    (r"_bytes\b", "bytes"),
    (r"hndsr_psnr_rolling_mean", "dB"),
    (r"rate\(hndsr(_jobs)?_tiles_total", "suffix: tiles/s"),
    (r"hndsr_drift_(detected|insufficient_data)|hndsr_jobs_redis_up", "bool_yes_no"),
]


def test_worker_and_queue_panels_read_every_job_metric() -> None:
    source = (ROOT / "serving" / "jobs" / "metrics.py").read_text()
    defined = set(re.findall(r'"(hndsr_jobs_\w+)"', source))
    assert len(defined) >= 8
    read = {n.removesuffix("_bucket").removesuffix("_total") for p in _graphs() for n in _reads(p)}
    assert {d.removesuffix("_total") for d in defined} <= read, sorted(defined - read)


# ------------------------------------------------------------------------- real servers, Prometheus


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("canary")
    ckpt = write_checkpoint(tmp / "ckpt")
    # The revision as Knative gives it (K_REVISION) and as set explicitly (HNDSR_REVISION).
    pred = predictor(tmp, ckpt, env={"HNDSR_REVISION": "", "K_REVISION": PREDICTOR_REVISION}).start()
    try:
        trans = transformer(tmp, pred.url, env={"HNDSR_REVISION": TRANSFORMER_REVISION}).start()
        try:
            _traffic(trans)
            yield pred, trans
        finally:
            trans.stop()
    finally:
        pred.stop()


def _traffic(trans: Server) -> None:
    """One answered request and one refused (422) before any model."""
    with httpx.Client(timeout=300) as http:
        body = {"instances": [{"image_b64": b64(png_bytes(40, 48, seed=2)), "scale": 2}]}
        assert http.post(trans.url + "/v1/models/hndsr:predict", json=body).status_code == 200
        bad = {"instances": [{"image_b64": b64(png_bytes(40, 48)), "scale": 99}]}
        assert http.post(trans.url + "/v1/models/hndsr:predict", json=bad).status_code == 422


def _samples(server: Server) -> list[Any]:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("hndsr_")]


@pytest.mark.timeout(900)  # two server starts on a busy 2-core machine
def test_every_served_sample_carries_revision_and_model_version(servers: tuple[Server, Server]) -> None:
    pred, trans = servers
    version = httpx.get(pred.url + "/health", timeout=30).json()["model_version"]
    assert version
    for server, revision in ((pred, PREDICTOR_REVISION), (trans, TRANSFORMER_REVISION)):
        samples = _samples(server)
        assert len({s.name for s in samples}) >= 8
        for s in samples:
            assert s.labels.get("revision") == revision, s
            assert s.labels.get("model_version"), s
            assert not math.isnan(s.value), s
    # The predictor labels everything with the checkpoint it loaded; the transformer labels a
    # request with the model that answered it and what no model answered (the 422) with "none".
    assert {s.labels["model_version"] for s in _samples(pred)} == {version}
    codes = {
        (s.labels["code"], s.labels["model_version"])
        for s in _samples(trans)
        if s.name == "hndsr_requests_total"
    }
    assert codes == {("200", version), ("422", "none")}


@pytest.mark.timeout(900)  # two server starts on a busy 2-core machine
def test_quality_proxy_is_a_number_on_the_transformer_only(servers: tuple[Server, Server]) -> None:
    pred, trans = servers
    version = httpx.get(pred.url + "/health", timeout=30).json()["model_version"]
    assert not [s for s in _samples(pred) if s.name == "hndsr_psnr_rolling_mean"]
    (psnr,) = [s for s in _samples(trans) if s.name == "hndsr_psnr_rolling_mean"]
    assert psnr.labels["model_version"] == version
    assert math.isfinite(psnr.value) and 20 < psnr.value <= 100


@pytest.fixture(scope="module")
def prometheus(servers: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("prometheus")
    pred, trans = servers
    port = free_port()
    jobs = [
        {"job_name": job, "static_configs": [{"targets": [s.url.removeprefix("http://")]}]}
        for job, s in (("predictor", pred), ("transformer", trans))
    ]
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    args = [
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = start("prometheus", args, port, tmp, "/-/ready")
    try:
        deadline = time.monotonic() + 60
        while len(query(proc, "up == 1")) < 2:  # both scraped once: the next requests make rates
            assert time.monotonic() < deadline, query(proc, "up")
            time.sleep(0.5)
        _traffic(trans)
        yield proc
    finally:
        proc.stop()


def _dashboard_query(expr: str) -> str:
    return expr.replace("$job", ".*").replace("$revision", ".*")


@needs_tool("prometheus")
@pytest.mark.timeout(900)
def test_canary_row_on_a_real_prometheus(servers: tuple[Server, Server], prometheus: Process) -> None:
    """Scraped while requests arrive, the row's latency, error ratio (0, not "no data", without
    5xx), quality proxy and breaker are numbers per job, revision and model version; every query
    of the dashboard parses."""
    pred, _ = servers
    version = httpx.get(pred.url + "/health", timeout=30).json()["model_version"]
    row = {_alert_of(p): _dashboard_query(p["targets"][0]["expr"]) for p in _canary_row()}
    wanted = ("HNDSRHighLatencyP95", "HNDSRHighErrorRatio", "HNDSRQualityProxyLow", "HNDSRCircuitBreakerOpen")

    def ready() -> bool:
        results = [query(prometheus, row[a]) for a in wanted]
        # Both servers' latency histograms: the transformer's first scrape can land a round later.
        jobs = {x["metric"]["job"] for x in query(prometheus, row["HNDSRHighLatencyP95"])}
        numbers = all(r and all(x["value"][1] != "NaN" for x in r) for r in results)
        return numbers and jobs == {"predictor", "transformer"}

    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, {a: query(prometheus, row[a]) for a in wanted}
        time.sleep(1)
    for alert in wanted:
        series = query(prometheus, row[alert])
        revisions = {(r["metric"]["job"], r["metric"]["revision"]) for r in series}
        assert revisions <= {("predictor", PREDICTOR_REVISION), ("transformer", TRANSFORMER_REVISION)}, alert
        assert all(r["metric"]["model_version"] in (version, "none") for r in series), (alert, series)
        assert all(math.isfinite(float(r["value"][1])) for r in series), (alert, series)
    (psnr,) = query(prometheus, row["HNDSRQualityProxyLow"])
    assert psnr["metric"]["model_version"] == version and math.isfinite(float(psnr["value"][1]))
    p95 = {r["metric"]["job"] for r in query(prometheus, row["HNDSRHighLatencyP95"])}
    assert p95 == {"predictor", "transformer"}
    for panel in _graphs():
        for target in panel["targets"]:
            body = httpx.get(
                prometheus.url + "/api/v1/query",
                params={"query": _dashboard_query(target["expr"])},
                timeout=10,
            ).json()
            assert body["status"] == "success", (panel["title"], target["expr"], body)
