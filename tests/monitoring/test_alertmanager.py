"""Alertmanager configuration: amtool check-config, every alert rule routed to its intended receiver
by `amtool config routes test` (a rule no route takes fails with its name and what to add), runbook
sections for every rule, and the AlertmanagerConfig manifest in sync with the file (its CRD schema is
checked by tests/manifests)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from tooling import needs_tool, require_tool
from typer.testing import CliRunner

from deploy.cli import ALERTMANAGER_MANIFEST, alertmanager_config_manifest
from hndsr.alerting import alertmanager_config, secrets
from hndsr.errors import InputError
from hndsr_cli import app

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "monitoring" / "alertmanager.yml"
RULES = ROOT / "monitoring" / "rules" / "hndsr-alerts.yml"
RUNBOOK = ROOT / "monitoring" / "RUNBOOK.md"
needs_amtool = needs_tool("amtool")

UNROUTED = "hndsr-unrouted"
# Who each alert is for (the policy): critical pages, drift goes to the data team's channel,
# other warnings to the serving channel. A new rule must be added here with its receiver.
INTENDED = {
    "HNDSRHighLatencyP95": "hndsr-serving-chat",
    "HNDSRHighErrorRatio": "hndsr-pager",
    "HNDSRGPUMemoryNearLimit": "hndsr-serving-chat",
    "HNDSRInferenceFailures": "hndsr-pager",
    "HNDSRCircuitBreakerOpen": "hndsr-pager",
    "HNDSRQualityProxyLow": "hndsr-serving-chat",
    "HNDSRUncertaintyShift": "hndsr-serving-chat",
    "HNDSRDataDrift": "hndsr-data-chat",
    "HNDSRDriftJobStale": "hndsr-data-chat",
    "HNDSRDriftJobAbsent": "hndsr-data-chat",
}


def _rules(path: Path = RULES) -> dict[str, dict]:
    doc = yaml.safe_load(path.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("amtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def route_problems(rules: dict[str, dict], config: Path = CONFIG) -> list[str]:
    """One line per rule that does not land on its intended receiver, saying what to add."""
    problems = []
    for name, rule in rules.items():
        labels = {"alertname": name, **rule.get("labels", {})}
        res = _amtool(
            "config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items())
        )
        got = res.stdout.strip()
        if res.returncode != 0:
            problems.append(f"{name}: amtool failed: {res.stderr.strip()}")
        elif name not in INTENDED:
            problems.append(
                f"{name}: no intended receiver: add it to INTENDED in tests/monitoring/test_alertmanager.py "
                f"(it routes to {got} now)"
            )
        elif got == UNROUTED:
            problems.append(
                f"{name}: no route of {config.name} takes it (labels {rule.get('labels', {})}): give it "
                "labels severity (critical|warning) and team (serving|data), or add a route"
            )
        elif got != INTENDED[name]:
            problems.append(f"{name}: routed to {got}, intended {INTENDED[name]}")
    return problems


@needs_amtool
def test_amtool_check_config() -> None:
    res = _amtool("check-config", CONFIG)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "4 receivers" in res.stdout, res.stdout


@needs_amtool
def test_every_rule_lands_on_its_receiver() -> None:
    rules = _rules()
    assert set(rules) == set(INTENDED), "each rule needs an entry in INTENDED, and only rules"
    assert route_problems(rules) == []


@needs_amtool
def test_a_rule_without_route_fails_with_its_name_and_what_to_add(tmp_path: Path) -> None:
    rules = _rules()
    rules["HNDSRNewThing"] = {"alert": "HNDSRNewThing", "expr": "vector(1)", "labels": {"severity": "info"}}
    rules["HNDSRHighErrorRatio"] = {**rules["HNDSRHighErrorRatio"], "labels": {"team": "serving"}}
    problems = route_problems(rules)
    assert len(problems) == 2, problems
    assert problems[0].startswith("HNDSRHighErrorRatio: no route") and "severity" in problems[0]
    assert problems[1].startswith("HNDSRNewThing: no intended receiver") and "INTENDED" in problems[1]


@needs_amtool
def test_inhibitions_are_the_intended_ones() -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    pairs = {
        (src, tgt)
        for rule in doc["inhibit_rules"]
        for src in re.findall(r"HNDSR\w+", " ".join(rule["source_matchers"]))
        for tgt in re.findall(r"HNDSR\w+", " ".join(rule["target_matchers"]))
    }
    assert pairs == {
        ("HNDSRCircuitBreakerOpen", "HNDSRHighErrorRatio"),
        ("HNDSRCircuitBreakerOpen", "HNDSRHighLatencyP95"),
        ("HNDSRInferenceFailures", "HNDSRHighErrorRatio"),
        ("HNDSRDriftJobStale", "HNDSRDataDrift"),
        ("HNDSRDriftJobAbsent", "HNDSRDataDrift"),
    }
    assert set().union(*pairs) <= set(_rules()), "an inhibition names an alert no rule defines"


@needs_amtool
@pytest.mark.parametrize(
    "receiver, problem",
    [
        ({"name": "x", "slack_configs": [{"channel": "#x"}]}, "no global Slack API URL"),
        ({"name": "x", "pagerduty_configs": [{"severity": "critical"}]}, "missing service or routing key"),
    ],
)
def test_amtool_refuses_a_receiver_without_its_secret(tmp_path: Path, receiver: dict, problem: str) -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    doc["receivers"].append(receiver)
    bad = tmp_path / "alertmanager.yml"
    bad.write_text(yaml.safe_dump(doc))
    res = _amtool("check-config", bad)
    assert res.returncode != 0 and problem in res.stdout + res.stderr, res.stdout + res.stderr


@needs_amtool
def test_amtool_refuses_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "alertmanager.yml"
    bad.write_text(CONFIG.read_text().replace("receiver: hndsr-pager", "receiver: hndsr-nobody"))
    res = _amtool("check-config", bad)
    assert res.returncode != 0 and "hndsr-nobody" in res.stdout + res.stderr


def test_credentials_come_from_files_never_from_the_repository() -> None:
    text = CONFIG.read_text()
    assert not re.search(r"^\s*(api_url|routing_key|service_key|url):", text, re.M)
    assert secrets(text, "alertmanager.yml") == {
        "hndsr-alertmanager-pagerduty": ["routing-key"],
        "hndsr-alertmanager-slack": ["serving-webhook-url", "data-webhook-url"],
    }


@pytest.mark.parametrize(
    "config, message",
    [
        ({"slack_configs": [{"api_url": "https://hooks.example/T0/B0/x"}]}, "sets api_url in the file"),
        ({"slack_configs": [{"channel": "#x"}]}, "has no api_url_file: add api_url_file"),
        ({"pagerduty_configs": [{"severity": "critical"}]}, "has no routing_key_file"),
        (
            {"slack_configs": [{"api_url_file": "/run/secrets/slack"}]},
            "/etc/alertmanager/secrets/<secret>/<key>",
        ),
        ({}, "has no configs"),
    ],
)
def test_the_manifest_refuses_a_receiver_without_its_secret(config: dict, message: str) -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    doc["receivers"].append({"name": "hndsr-broken", **config})
    with pytest.raises(InputError, match=re.escape(message)) as err:
        alertmanager_config(yaml.safe_dump(doc), "alertmanager.yml")
    assert "hndsr-broken" in str(err.value)


def test_alertmanagerconfig_manifest_in_sync() -> None:
    expected = alertmanager_config_manifest(CONFIG.read_text(), "monitoring/alertmanager.yml")
    assert (ROOT / ALERTMANAGER_MANIFEST).read_text() == expected, "run `hndsr manifests render-alertmanager`"
    spec = yaml.safe_load(expected)["spec"]
    assert [r["receiver"] for r in spec["route"]["routes"]] == [
        "hndsr-pager",
        "hndsr-data-chat",
        "hndsr-serving-chat",
    ]
    assert spec["receivers"][0]["pagerdutyConfigs"][0]["routingKey"] == {
        "name": "hndsr-alertmanager-pagerduty",
        "key": "routing-key",
    }
    assert len(spec["inhibitRules"]) == 3


def test_render_alertmanager_check_fails_when_out_of_date(tmp_path: Path) -> None:
    out = tmp_path / "alertmanagerconfig.yaml"
    args = ["manifests", "render-alertmanager", "--source", str(CONFIG), "--out", str(out)]
    assert CliRunner().invoke(app, [*args, "--check"]).exit_code == 1
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, [*args, "--check"]).exit_code == 0


def test_every_rule_has_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).lower()).replace(" ", "-")
        for m in re.finditer(r"^## (.+)$", RUNBOOK.read_text(), re.M)
    }
    for name, rule in _rules().items():
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"monitoring/RUNBOOK.md#{name.lower()}", f"{name}: runbook_url {url!r}"
        assert name.lower() in anchors, f"{name}: add a '## {name}' section to monitoring/RUNBOOK.md"
    section = RUNBOOK.read_text().split("## HNDSRHighErrorRatio")[1].split("\n## ")[0]
    assert (
        "**Means:**" in section and "**Confirm:**" in section and "hndsr canary rollback --apply" in section
    )
