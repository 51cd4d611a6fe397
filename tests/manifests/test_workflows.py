"""The GitHub Actions workflows: valid YAML of the right structure, pinned actions, and what each must do
(quality through .ci/run, model validation, images tagged by sha, staging automatic, production manual
with canary steps that are real `hndsr canary` commands)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from deploy.image_tags import IMAGE_KINDS
from hndsr_cli import app

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


def load(name: str) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    raw["on"] = raw.pop(True, raw.get("on"))  # YAML 1.1 reads a bare `on` key as true
    return raw


def steps(doc: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return list(doc["jobs"][job]["steps"])


def scripts(doc: dict[str, Any], job: str) -> str:
    return "\n".join(step.get("run", "") for step in steps(doc, job))


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.yml")))
def test_structure(name: str) -> None:
    doc = load(name)
    assert doc["name"] and doc["on"], f"{name}: needs a name and triggers"
    assert doc["jobs"], f"{name}: no jobs"
    for job_id, job in doc["jobs"].items():
        assert re.match(r"^[A-Za-z_][\w-]*$", job_id)
        assert job["runs-on"] and job["steps"] and job.get("timeout-minutes"), f"{name}/{job_id}"
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), (
                f"{name}/{job_id}: a step runs or uses, not both: {step}"
            )
            if "uses" in step:
                assert PINNED_ACTION.match(step["uses"]), f"{name}/{job_id}: unpinned action {step['uses']}"
            if "run" in step:
                assert step["run"].strip()
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in doc["jobs"], f"{name}/{job_id} needs unknown job {need}"


def test_ci_runs_code_quality_and_model_validation() -> None:
    doc = load("ci.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    quality = scripts(doc, "quality")
    assert ".ci/run" in quality and "make lint" in quality
    model = scripts(doc, "model-validation")
    for test in ("tests/model/test_models.py", "tests/project/test_config.py", "tests/manifests"):
        assert test in model
        assert (ROOT / test).exists(), f"ci.yml runs {test}, which does not exist"
    assert "load_release_checkpoint" in model


def test_images_are_built_as_here_tested_then_tagged_by_sha_and_version() -> None:
    doc = load("images.yml")
    (job,) = doc["jobs"].values()
    runs = [s.get("run", "") for s in job["steps"]]
    text = "\n".join(runs)
    build = next(i for i, r in enumerate(runs) if "scripts/build-images.sh" in r)  # what `make images` runs
    test = next(i for i, r in enumerate(runs) if "pytest tests/containers" in r)
    push = next(i for i, r in enumerate(runs) if "buildah push" in r)
    assert build < test < push  # the pushed images are the tested ones
    assert doc["env"]["CI"] == "true" and doc["env"]["BUILDER"] == "buildah"
    assert "install-container-tools.sh" in text
    for kind in IMAGE_KINDS:
        assert (ROOT / "docker" / f"{kind}.Dockerfile").is_file()
    assert "for kind in " + " ".join(IMAGE_KINDS) in runs[push]
    assert '"docker://$REGISTRY/hndsr-$kind:$tag"' in runs[push]  # the names of deploy.image_tags.image_ref
    assert '"${{ github.sha }}" "$version"' in runs[push]
    assert "make images" in (ROOT / ".ci" / "run").read_text()


def _canary_commands(text: str) -> list[list[str]]:
    return [
        shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith("hndsr canary")
    ]


def test_deploy_staging_automatic_production_manual_with_canary_steps() -> None:
    doc = load("deploy.yml")
    assert doc["on"]["workflow_run"]["workflows"] == ["images"]
    staging, production = doc["jobs"]["staging"], doc["jobs"]["production"]
    assert "workflow_run" in staging["if"] and "success" in staging["if"]
    assert "manifests/overlays/staging" in scripts(doc, "staging")
    assert "workflow_dispatch" in production["if"] and production["environment"] == "production"
    options = doc["on"]["workflow_dispatch"]["inputs"]["step"]["options"]
    assert {"start", "promote", "rollback", "status"} <= set(options)
    commands = _canary_commands(scripts(doc, "production"))
    assert {c[2] for c in commands} == {"start", "status", "promote", "rollback"}
    cli: Any = typer.main.get_command(app)
    group = cli.commands["canary"]
    for command in commands:
        sub = group.commands[command[2]]
        ctx = sub.make_context(
            command[2], [a.replace("${{ inputs.storage_uri }}", "s3://b/m") for a in command[3:]]
        )
        assert ctx.params["apply"] is True, f"{shlex.join(command)}: the workflow must run, not print"
    # Promotion waits for a clean bill from the alert rules the manifests deploy.
    promote_steps = [s for s in production["steps"] if "promote" in s.get("if", "")]
    assert "prometheusrule.yaml" in promote_steps[0]["run"] and "firing" in promote_steps[0]["run"]
    assert promote_steps[-1]["run"].startswith("hndsr canary promote")
