"""The compiled pipeline YAML (a build output): deterministic, the expected tasks, edges and settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from deploy.image_tags import image_ref
from hndsr_cli import app
from pipelines.runner import PipelineArguments, compile_pipeline, read_params

ROOT = Path(__file__).resolve().parents[2]

EDGES = {
    "initial-model": set(),
    "incumbent-model": set(),
    "prepare": {"initial-model"},
    "validate": {"prepare"},
    "train-autoencoder": {"initial-model", "prepare", "validate"},
    "train-operator": {"initial-model", "prepare", "train-autoencoder"},
    "train-diffusion": {"initial-model", "prepare", "train-operator"},
    "evaluate": {"incumbent-model", "prepare", "train-diffusion"},
    "register": {"prepare", "train-diffusion", "evaluate"},
}
TRAIN_TASKS = ("train-autoencoder", "train-operator", "train-diffusion")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    args = PipelineArguments(params=read_params(ROOT / "params.yaml", "quick"), profile="quick")
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml", args)
    return path, yaml.safe_load(path.read_text())


def test_tasks_and_edges(compiled: tuple[Path, dict[str, Any]]) -> None:
    tasks = compiled[1]["root"]["dag"]["tasks"]
    assert {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()} == EDGES
    # Artifacts flow along the chain: each stage starts from the previous stage's model.
    assert tasks["train-operator"]["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train-autoencoder",
    }
    assert tasks["register"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == (
        "train-diffusion"
    )


def test_settings_images_and_defaults(compiled: tuple[Path, dict[str, Any]]) -> None:
    spec = compiled[1]
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image_ref("train")}
    for name in TRAIN_TASKS:
        resources = executors[f"exec-{name}"]["container"]["resources"]["accelerator"]
        assert resources["resourceType"] == "nvidia.com/gpu" and resources["resourceCount"] == "1"
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        assert tasks[name]["cachingOptions"]["enableCache"] is True
    assert "accelerator" not in executors["exec-evaluate"]["container"].get("resources", {})
    assert tasks["register"]["cachingOptions"] == {}  # never cached: the registry changes between runs
    # Nothing is pip-installed at run time: the image carries hndsr and kfp.
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["profile"]["defaultValue"] == "quick"
    assert yaml.safe_load(params["params"]["defaultValue"])["profiles"]["quick"]
    assert params["training_backend"]["defaultValue"] == "in-process"
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "metrics": "system.Metrics",
        "evaluation": "system.Artifact",
        "report": "system.HTML",
    }
    card = spec["components"]["comp-register"]["outputDefinitions"]["artifacts"]["model_card"]
    assert card["artifactType"]["schemaTitle"] == "system.Markdown"


def test_compile_is_deterministic_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    for name in ("a.yaml", "b.yaml"):
        result = runner.invoke(app, ["pipeline", "compile", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.yaml").read_bytes() == (tmp_path / "b.yaml").read_bytes()


def test_run_without_local_and_bad_params_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["pipeline", "run", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 2 and "--local" in result.output
    result = runner.invoke(app, ["pipeline", "run", "--local", "--params", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "params file" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app,
        ["pipeline", "run", "--local", "--params", str(ROOT / "params.yaml"), "--data", str(tmp_path / "no")],
    )
    assert result.exit_code == 2 and "hndsr data sample" in result.output
