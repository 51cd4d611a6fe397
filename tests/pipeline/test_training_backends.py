"""The train step's training_backend seam: in-process (default) or a Kubeflow PyTorchJob, and the
pipeline compiled for the PyTorchJob backend, whose train steps mount the training volume."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components import training_steps
from components.pytorchjob import MOUNT
from hndsr.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, backend: str) -> None:
    training_steps.train_stage(
        "autoencoder",
        str(tmp_path / "dataset"),
        str(tmp_path / "out"),
        params=(ROOT / "params.yaml").read_text(),
        profile="quick",
        epochs=0,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        training_backend=backend,
    )


def test_unknown_backend_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="in-process, pytorchjob"):
        _train(tmp_path, "slurm")


@pytest.mark.skipif(Path(MOUNT).exists(), reason=f"{MOUNT} exists here: this checks its absence")
def test_pytorchjob_backend_needs_the_shared_volume_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="volume mounted"):
        _train(tmp_path, "pytorchjob")
    # The step's MLflow run records the backend and ends failed, not running.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.params.get("training_backend") for r in runs] == ["pytorchjob"]
    assert runs[0].info.status == "FAILED"


def _compiled(tmp_path: Path, backend: str) -> list[dict]:
    import yaml

    from pipelines.runner import PipelineArguments, compile_pipeline, read_params

    args = PipelineArguments(
        params=read_params(ROOT / "params.yaml", "quick"), profile="quick", training_backend=backend
    )
    path = compile_pipeline(tmp_path / f"{backend}.yaml", args)
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pvc_mounts(docs: list[dict]) -> dict[str, list[dict]]:
    platforms = [d["platforms"] for d in docs if "platforms" in d]
    executors = platforms[0]["kubernetes"]["deploymentSpec"]["executors"] if platforms else {}
    return {name: spec["pvcMount"] for name, spec in executors.items() if "pvcMount" in spec}


def test_the_pytorchjob_pipeline_mounts_the_training_volume_in_the_train_steps(tmp_path: Path) -> None:
    from components.pytorchjob import CLAIM

    docs = _compiled(tmp_path, "pytorchjob")
    mounts = _pvc_mounts(docs)
    assert set(mounts) == {"exec-train-autoencoder", "exec-train-operator", "exec-train-diffusion"}
    for name, (mount,) in mounts.items():
        assert mount["mountPath"] == MOUNT, name
        claim = mount.get("constant") or mount["pvcNameParameter"]["runtimeValue"]["constant"]
        assert claim == CLAIM, name
    spec = docs[0]
    assert spec["root"]["inputDefinitions"]["parameters"]["training_backend"]["defaultValue"] == "pytorchjob"
    # The in-process pipeline mounts nothing (a cluster without the claim can still run it).
    assert _pvc_mounts(_compiled(tmp_path, "in-process")) == {}


def test_compile_command_takes_the_backend(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from hndsr_cli import app

    out = tmp_path / "p.yaml"
    args = ["pipeline", "compile", "--out", str(out), "--params", str(ROOT / "params.yaml")]
    result = CliRunner().invoke(app, [*args, "--training-backend", "pytorchjob"])
    assert result.exit_code == 0, result.output
    assert _pvc_mounts([d for d in yaml.safe_load_all(out.read_text()) if d])
