"""The Alertmanager configuration (monitoring/alertmanager.yml) as a Prometheus Operator
``AlertmanagerConfig`` (manifests/base/alertmanagerconfig.yaml), so that the cluster routes alerts
exactly as the file that the tests check with amtool and deliver through a real Alertmanager.

Credentials: the file names them as ``/etc/alertmanager/secrets/<secret>/<key>`` (where the operator
mounts a Secret listed in an Alertmanager's ``spec.secrets``); the manifest refers to the same
``<secret>``/``<key>`` with a secret key selector. A value written into the file is refused.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from hndsr.errors import InputError

SECRETS_DIR = PurePosixPath("/etc/alertmanager/secrets")
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')

# Per receiver type: the Alertmanager keys a file may hold -> the AlertmanagerConfig field (None:
# handled apart), and (inline secret key, file key, manifest field) for the credential.
_SETTINGS: dict[str, dict[str, str | None]] = {
    "pagerduty_configs": {
        "routing_key_file": None,
        "severity": "severity",
        "description": "description",
        "details": None,
        "links": None,
        "send_resolved": "sendResolved",
        "class": "class",
        "component": "component",
        "group": "group",
        "client": "client",
        "client_url": "clientURL",
    },
    "slack_configs": {
        "api_url_file": None,
        "channel": "channel",
        "title": "title",
        "title_link": "titleLink",
        "text": "text",
        "send_resolved": "sendResolved",
        "username": "username",
        "color": "color",
    },
    "webhook_configs": {"url_file": None, "send_resolved": "sendResolved", "max_alerts": "maxAlerts"},
}
_CREDENTIAL = {
    "pagerduty_configs": ("routing_key", "routing_key_file", "routingKey"),
    "slack_configs": ("api_url", "api_url_file", "apiURL"),
    "webhook_configs": ("url", "url_file", "urlSecret"),
}
_KINDS = {
    "pagerduty_configs": "pagerdutyConfigs",
    "slack_configs": "slackConfigs",
    "webhook_configs": "webhookConfigs",
}
_ROUTE_KEYS = {
    "receiver": "receiver",
    "group_by": "groupBy",
    "group_wait": "groupWait",
    "group_interval": "groupInterval",
    "repeat_interval": "repeatInterval",
    "continue": "continue",
}


def parse_matcher(text: str) -> dict[str, str]:
    """``team="data"`` -> {name, matchType, value} (the AlertmanagerConfig's matcher)."""
    m = _MATCHER.match(text)
    if m is None:
        raise InputError(f'matcher {text!r} is not name="value" (or !=, =~, !~)')
    return {"name": m.group(1), "matchType": m.group(2), "value": m.group(3)}


def secret_ref(path: str, where: str) -> dict[str, str]:
    """/etc/alertmanager/secrets/<secret>/<key> -> {name: <secret>, key: <key>}."""
    p = PurePosixPath(path)
    if p.parent.parent != SECRETS_DIR:
        raise InputError(
            f"{where}: credential file {path} is not {SECRETS_DIR}/<secret>/<key>, where the operator "
            "mounts the Kubernetes Secret <secret>"
        )
    return {"name": p.parent.name, "key": p.name}


def _route(route: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in route.items():
        if key in _ROUTE_KEYS:
            out[_ROUTE_KEYS[key]] = value
        elif key == "matchers":
            out["matchers"] = [parse_matcher(m) for m in value]
        elif key != "routes":
            raise InputError(
                f"{where}: route key {key!r} has no AlertmanagerConfig equivalent here: use matchers"
            )
    if route.get("routes"):
        out["routes"] = [_route(r, f"{where}.routes[{i}]") for i, r in enumerate(route["routes"])]
    return out


def _receiver_config(kind: str, config: dict[str, Any], where: str) -> dict[str, Any]:
    inline, file_key, field = _CREDENTIAL[kind]
    if inline in config:
        raise InputError(
            f"{where} sets {inline} in the file: credentials stay out of the repository; use "
            f"{file_key}: {SECRETS_DIR}/<secret>/<key> and create that Secret"
        )
    if file_key not in config:
        raise InputError(
            f"{where} has no {file_key}: add {file_key}: {SECRETS_DIR}/<secret>/<key> and create the "
            "Secret <secret> with that key in the namespace"
        )
    out: dict[str, Any] = {field: secret_ref(config[file_key], where)}
    for key, value in config.items():
        if key not in _SETTINGS[kind]:
            raise InputError(
                f"{where}: {key!r} is not rendered into the AlertmanagerConfig; add it to hndsr.alerting"
            )
        target = _SETTINGS[kind][key]
        if target is not None:
            out[target] = value
        elif key == "details":
            out["details"] = [{"key": k, "value": v} for k, v in value.items()]
        elif key == "links":
            out["pagerDutyLinkConfigs"] = [
                {"href": link["href"], "alt": link.get("text", "")} for link in value
            ]
    return out


def alertmanager_config(config_yaml: str, source: str) -> dict[str, Any]:
    """The AlertmanagerConfig spec of an Alertmanager configuration file."""
    doc = yaml.safe_load(config_yaml)
    if not isinstance(doc, dict) or "route" not in doc or "receivers" not in doc:
        raise InputError(f"{source} is not an Alertmanager configuration: it needs 'route' and 'receivers'")
    receivers = []
    for receiver in doc["receivers"]:
        name = receiver["name"]
        out: dict[str, Any] = {"name": name}
        kinds = [k for k in receiver if k != "name"]
        if not kinds:
            raise InputError(f"{source}: receiver {name} has no configs: it would deliver nothing")
        for kind in kinds:
            if kind not in _KINDS:
                raise InputError(
                    f"{source}: receiver {name}: {kind} is not rendered; add it to hndsr.alerting"
                )
            out[_KINDS[kind]] = [
                _receiver_config(kind, c, f"{source}: receiver {name} {kind}[{i}]")
                for i, c in enumerate(receiver[kind])
            ]
        receivers.append(out)
    inhibit = [
        {
            "sourceMatch": [parse_matcher(m) for m in rule["source_matchers"]],
            "targetMatch": [parse_matcher(m) for m in rule["target_matchers"]],
            **({"equal": rule["equal"]} if rule.get("equal") else {}),
        }
        for rule in doc.get("inhibit_rules", [])
    ]
    return {
        "route": _route(doc["route"], f"{source}: route"),
        "receivers": receivers,
        "inhibitRules": inhibit,
    }


def secrets(config_yaml: str, source: str) -> dict[str, list[str]]:
    """Secret name -> keys the configuration reads (what to create in the namespace)."""
    spec = alertmanager_config(config_yaml, source)
    needed: dict[str, list[str]] = {}
    for receiver in spec["receivers"]:
        for kind, configs in receiver.items():
            if kind == "name":
                continue
            for config in configs:
                ref = next(v for k, v in config.items() if k in {c[2] for c in _CREDENTIAL.values()})
                keys = needed.setdefault(ref["name"], [])
                if ref["key"] not in keys:
                    keys.append(ref["key"])
    return needed
