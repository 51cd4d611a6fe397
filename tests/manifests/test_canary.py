"""`hndsr canary`: each step's patch, applied offline by the real kubectl (`kubectl patch --local`) to the
rendered production InferenceService, gives a valid InferenceService with the intended traffic split;
the CLI prints exactly those commands and, with --apply, runs kubectl."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_render import KUBECTL, MANIFESTS, find, needs_kubectl, render, validate_custom_resource
from typer.testing import CliRunner

from deploy.canary import (
    MODEL_VERSION_ANNOTATION,
    Patch,
    Target,
    promote_patch,
    rollback_patch,
    start_patch,
    step_commands,
)
from hndsr_cli import app

pytestmark = needs_kubectl
NEW_MODEL = "s3://hndsr/models/0.2.0"


def kubectl_patch_local(
    doc: dict[str, Any], patch: Patch, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "isvc.yaml"
    source.write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [
            str(KUBECTL),
            "patch",
            "--local",
            "-f",
            str(source),
            "--type",
            patch.kind,
            "-p",
            patch.text(),
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"KUBECONFIG": "/dev/null"},
    )


def apply(doc: dict[str, Any], patch: Patch, tmp_path: Path) -> dict[str, Any]:
    out = kubectl_patch_local(doc, patch, tmp_path)
    assert out.returncode == 0, out.stderr
    patched: dict[str, Any] = yaml.safe_load(out.stdout)
    validate_custom_resource(patched)
    return patched


@pytest.fixture(scope="module")
def prod_isvc() -> dict[str, Any]:
    (isvc,) = find(render(MANIFESTS / "overlays" / "prod"), "InferenceService", "hndsr")
    return isvc


def test_start_promote_rollback_on_the_rendered_manifest(prod_isvc: dict[str, Any], tmp_path: Path) -> None:
    old_model = prod_isvc["spec"]["predictor"]["model"]["storageUri"]
    started = apply(prod_isvc, start_patch(NEW_MODEL), tmp_path)
    predictor = started["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == NEW_MODEL != old_model
    # The new revision's metrics and alerts carry its model version (PodMonitor relabeling).
    version = NEW_MODEL.rstrip("/").rsplit("/", 1)[-1]
    assert predictor["annotations"][MODEL_VERSION_ANNOTATION] == version
    assert (
        prod_isvc["spec"]["predictor"]["annotations"][MODEL_VERSION_ANNOTATION]
        == old_model.rsplit("/", 1)[-1]
    )
    # Nothing else of the predictor changed (the runtime, resources, autoscaling stay).
    changed = ("canaryTrafficPercent", "model", "annotations")
    assert {k: v for k, v in predictor.items() if k not in changed} == {
        k: v for k, v in prod_isvc["spec"]["predictor"].items() if k not in changed
    }
    assert predictor["model"]["resources"] == prod_isvc["spec"]["predictor"]["model"]["resources"]

    promoted = apply(started, promote_patch(), tmp_path)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == NEW_MODEL

    rolled_back = apply(started, rollback_patch(), tmp_path)
    assert rolled_back["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert rolled_back["spec"]["transformer"] == prod_isvc["spec"]["transformer"]


def test_promote_without_a_canary_is_refused(prod_isvc: dict[str, Any], tmp_path: Path) -> None:
    promoted = apply(prod_isvc, promote_patch(), tmp_path)
    again = kubectl_patch_local(promoted, promote_patch(), tmp_path)
    assert again.returncode != 0 and "canaryTrafficPercent" in again.stderr


def test_the_cli_prints_the_commands_it_would_run() -> None:
    result = CliRunner().invoke(app, ["canary", "start", "--storage-uri", NEW_MODEL, "-n", "hndsr-staging"])
    assert result.exit_code == 0, result.output
    printed = [shlex.split(line) for line in result.output.strip().splitlines()]
    target = Target(namespace="hndsr-staging")
    assert printed == step_commands("start", target, storage_uri=NEW_MODEL)
    patch = printed[0]
    assert patch[:6] == ["kubectl", "--namespace", "hndsr-staging", "patch", "inferenceservice", "hndsr"]
    assert patch[patch.index("-p") + 1] == start_patch(NEW_MODEL).text()
    assert printed[1][3:] == ["wait", "inferenceservice/hndsr", "--for=condition=Ready", "--timeout=600s"]

    for step, patch_obj in (("promote", promote_patch()), ("rollback", rollback_patch())):
        result = CliRunner().invoke(app, ["canary", step, "--context", "prod-cluster"])
        assert result.exit_code == 0, result.output
        first = shlex.split(result.output.splitlines()[0])
        assert first[:3] == ["kubectl", "--context", "prod-cluster"]
        assert first[first.index("--type") + 1] == patch_obj.kind
        assert first[first.index("-p") + 1] == patch_obj.text()

    status = CliRunner().invoke(app, ["canary", "status"])
    assert status.exit_code == 0 and status.output.count("kubectl") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["canary", "start", "--storage-uri", "models/new"], "not a model location"),
        (["canary", "start", "--storage-uri", "s3://bucket-only"], "not a model location"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_canary_percent_must_split_the_traffic() -> None:
    for percent in (0, 100):
        with pytest.raises(Exception, match=r"outside 1\.\.99"):
            start_patch(NEW_MODEL, percent)


def test_apply_runs_kubectl_and_returns_its_failure(tmp_path: Path) -> None:
    # No API server here: kubectl itself must run and fail to connect, and the CLI must pass that on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{closed_port}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "hndsr_cli", "canary", "rollback", "--apply"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"KUBECONFIG": str(kubeconfig), "PATH": f"{Path(str(KUBECTL)).parent}:/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "$ kubectl --namespace hndsr patch inferenceservice hndsr --type merge -p" in result.stderr
    assert f"127.0.0.1:{closed_port}" in result.stderr  # kubectl's own connection error
