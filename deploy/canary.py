"""Canary rollouts of the InferenceService as ``kubectl`` commands (no Kubernetes client library).

KServe splits traffic between the last rolled-out predictor revision and a new one when
``spec.predictor.canaryTrafficPercent`` is set; this needs the Serverless (Knative) deployment mode.

- start: a new ``storageUri`` with ``canaryTrafficPercent: 10`` -> the new revision gets 10%; the
  pod annotation ``hndsr.io/model-version`` (the URI's last segment) becomes the ``model_version``
  label of KServe's own metrics of the revision (manifests/base/monitors.yaml); the hndsr_* metrics
  carry the version of the checkpoint the predictor loaded themselves (serving.metrics).
- promote: remove ``canaryTrafficPercent`` -> the new revision gets 100%.
- rollback: ``canaryTrafficPercent: 0`` -> the previous revision gets 100% again.

Each step is a patch (kept as data so that tests apply it to the rendered manifest) and the exact
command lines that apply it and wait for the result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hndsr.errors import InputError

CANARY_PERCENT = 10
MODEL_VERSION_ANNOTATION = "hndsr.io/model-version"
_STORAGE_URI = re.compile(r"^(s3|gs|https?|pvc|hf)://[^/\s]+/\S+$")


@dataclass(frozen=True)
class Target:
    """Which InferenceService, where."""

    name: str = "hndsr"
    namespace: str = "hndsr"
    context: str | None = None

    def kubectl(self, *args: str) -> list[str]:
        base = ["kubectl"] + (["--context", self.context] if self.context else [])
        return [*base, "--namespace", self.namespace, *args]


@dataclass(frozen=True)
class Patch:
    """A patch of the InferenceService: ``kind`` is kubectl's ``--type`` (merge | json)."""

    kind: str
    body: Any

    def text(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


def start_patch(storage_uri: str, percent: int = CANARY_PERCENT) -> Patch:
    if not _STORAGE_URI.match(storage_uri):
        raise InputError(
            f"storage URI {storage_uri!r} is not a model location KServe can download: use "
            "s3://bucket/models/<version> (or gs://, https://, pvc://)"
        )
    if not 1 <= percent <= 99:
        raise InputError(f"canary percent {percent} is outside 1..99: a canary takes part of the traffic")
    predictor = {
        "canaryTrafficPercent": percent,
        "annotations": {MODEL_VERSION_ANNOTATION: model_version(storage_uri)},
        "model": {"storageUri": storage_uri},
    }
    return Patch("merge", {"spec": {"predictor": predictor}})


def model_version(storage_uri: str) -> str:
    """s3://hndsr/models/0.2.0/ -> 0.2.0 (training writes models under their version)."""
    return storage_uri.rstrip("/").rsplit("/", 1)[-1]


def promote_patch() -> Patch:
    # JSON patch "remove" fails when the field is absent: promoting with no canary is an error.
    return Patch("json", [{"op": "remove", "path": "/spec/predictor/canaryTrafficPercent"}])


def rollback_patch() -> Patch:
    return Patch("merge", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})


def patch_command(target: Target, patch: Patch) -> list[str]:
    return target.kubectl("patch", "inferenceservice", target.name, "--type", patch.kind, "-p", patch.text())


def wait_command(target: Target, timeout_s: int = 600) -> list[str]:
    return target.kubectl(
        "wait", f"inferenceservice/{target.name}", "--for=condition=Ready", f"--timeout={timeout_s}s"
    )


def status_commands(target: Target) -> list[list[str]]:
    """The InferenceService's readiness and revisions, then the traffic split of the predictor."""
    split = (
        "{range .status.components.predictor.traffic[*]}"
        '{.revisionName}{"\\t"}{.percent}%{"\\t"}{.tag}{"\\n"}{end}'
    )
    return [
        target.kubectl("get", "inferenceservice", target.name),
        target.kubectl("get", "inferenceservice", target.name, "-o", f"jsonpath={split}"),
    ]


def step_commands(action: str, target: Target, *, storage_uri: str | None = None) -> list[list[str]]:
    """Commands of one step: status | start | promote | rollback."""
    if action == "status":
        return status_commands(target)
    if action == "start":
        if storage_uri is None:
            raise InputError("canary start needs the new model: --storage-uri s3://bucket/models/<version>")
        patch = start_patch(storage_uri)
    elif action == "promote":
        patch = promote_patch()
    elif action == "rollback":
        patch = rollback_patch()
    else:
        raise InputError(f"unknown canary step {action!r}: use status, start, promote or rollback")
    return [patch_command(target, patch), wait_command(target), *status_commands(target)]
