"""The train step's training_backend seam: in-process (default) or a Kubeflow PyTorchJob."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from components import steps
from components.pytorchjob import MOUNT
from hndsr.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, backend: str) -> None:
    steps.train_stage(
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
