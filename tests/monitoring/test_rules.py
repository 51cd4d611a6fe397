"""Alert rules and dashboard: promtool check and unit tests of the shipped rules (and that each test
fails without its rule), and every PromQL expression names only metrics the project exports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from tooling import needs_tool, require_tool

from monitoring.drift.detection import DriftResult
from monitoring.drift.pushgateway import push_registry
from serving.jobs.metrics import QueueCollector
from serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "hndsr-alerts.yml"
RULE_TESTS = sorted((ROOT / "monitoring" / "rules" / "tests").glob("*.yml"))
DASHBOARD = ROOT / "monitoring" / "dashboards" / "hndsr.json"
needs_promtool = needs_tool("promtool")


def _alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=240
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    res = _promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in res.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    res = _promtool("test", "rules", *RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_every_alert_is_tested_firing_and_not_firing(tmp_path: Path) -> None:
    """Each alert has a firing and a silent case, and its tests fail once its expression never fires."""
    tests = [t for f in RULE_TESTS for t in yaml.safe_load(f.read_text())["tests"]]
    files = []
    for name in _alerts():
        cases = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), name
        doc = yaml.safe_load(RULES.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == name:
                    rule["expr"] = "vector(1) == 0"
        (tmp_path / f"{name}.rules.yml").write_text(yaml.safe_dump(doc))
        mine = [
            t | {"alert_rule_test": [c for c in t["alert_rule_test"] if c["alertname"] == name]}
            for t in tests
        ]
        mine = [t for t in mine if t["alert_rule_test"]]
        test_file = tmp_path / f"{name}.test.yml"
        test_file.write_text(yaml.safe_dump({"rule_files": [f"{name}.rules.yml"], "tests": mine}))
        files.append((name, test_file))
    for name, test_file in files:
        res = _promtool("test", "rules", test_file)
        assert res.returncode != 0, f"the tests of {name} pass without its rule"


# ------------------------------------------------------------------------- metric names

_FUNCTION_OR_KEYWORD = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "bool",
    "offset",
    "group_left",
}
_STRIP = [
    r'"(?:[^"\\]|\\.)*"',  # strings
    r"\{[^}]*\}",  # label matchers
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",  # label lists
    r"\[[^\]]*\]",  # ranges
    r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b",  # numbers
]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (identifiers that are not functions or keywords)."""
    for pattern in _STRIP:
        expr = re.sub(pattern, " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()
        if match.group() not in _FUNCTION_OR_KEYWORD and not following.startswith("("):
            names.add(match.group())
    return names


def test_metric_name_parser() -> None:
    expr = 'sum by (job, le) (rate(a_bucket{code=~"5..",job="x"}[5m])) / on(job) b > 2 * max(c_total) and d'
    assert metric_names(expr) == {"a_bucket", "b", "c_total", "d"}


def _registry_names(registry: CollectorRegistry) -> set[str]:
    return set(registry._names_to_collectors)


def _defined_in_source() -> set[str]:
    """Names of prometheus_client metrics constructed anywhere in the project's packages (metrics of
    modules this test cannot instantiate, e.g. the job workers'), with the suffixes they export."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_count", "_sum", "_created"),
        "Summary": ("_count", "_sum", "_created"),
    }
    names = set()
    for package in ("hndsr", "serving", "monitoring", "components", "pipelines", "jobs", "worker", "ingress"):
        for path in (ROOT / package).rglob("*.py") if (ROOT / package).is_dir() else []:
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                    continue
                kind = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if kind in suffixes and isinstance(node.args[0].value, str):
                    base = node.args[0].value.removesuffix("_total")
                    names |= {base + s for s in suffixes[kind]}
    return names


def exported_metrics() -> set[str]:
    registry = CollectorRegistry()
    ServingMetrics(registry)
    pushed = push_registry(
        DriftResult(
            state="ok",
            window_size=1,
            reference_size=1,
            drift_share=0.1,
            pvalues={"mean_r": 1.0},
            scores={"mean_r": 0.0},
        ),
        schedule_s=60,
    )
    import kserve.metrics  # noqa: F401 - KServe's own histograms, on every server's /metrics
    from prometheus_client import REGISTRY

    return (
        _registry_names(registry)
        | _registry_names(pushed)
        | _registry_names(REGISTRY)
        | _defined_in_source()
        | set(QueueCollector.NAMES)  # read from Redis at scrape time, not constructed as metrics
    )


def _rule_exprs() -> list[str]:
    return [r["expr"] for r in _alerts().values()]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_metrics()
    assert {"hndsr_requests_total", "hndsr_drift_share", "hndsr_request_stats_dropped_total"} <= exported
    for expr in _rule_exprs() + [re.sub(r"label_values\((\w+),.*\)", r"\1", e) for e in _dashboard_exprs()]:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} names metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_the_signals() -> None:
    dash = json.loads(DASHBOARD.read_text())
    read = set().union(*(metric_names(e) for e in _dashboard_exprs()))
    for needed in (
        "hndsr_inference_latency_seconds_bucket",
        "hndsr_requests_total",
        "hndsr_queue_depth",
        "hndsr_circuit_breaker_state",
        "hndsr_drift_share",
        "hndsr_drift_feature_pvalue",
        "hndsr_drift_feature_score",
        "hndsr_gpu_vram_used_bytes",
    ):
        assert needed in read, needed
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
