"""Fine-tuning in the pipeline (``init_from``) and the incumbent-vs-challenger gate, through the real
``hndsr pipeline run --local`` on tiny generated images and a tiny initial checkpoint; and the bad
``init_from`` cases, which fail at the first step with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
import yaml
from imagesets import write_clean_set
from mlflow import MlflowClient
from synthetic import TINY_MODEL
from test_local_pipeline import Workdir, _artifact_metadata

from components import promotion, registry, tracking, training_steps
from components.initial import PinnedModel
from hndsr.checkpoint import load_checkpoint, save_checkpoint
from hndsr.errors import CheckpointError
from hndsr.models.hndsr_model import HNDSR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # whole pipelines in a module fixture

STAGES = ["autoencoder", "operator", "diffusion"]


def tiny_checkpoint(directory: Path, *, seed: int, offset: float = 0.0) -> str:
    """A tiny three-stage checkpoint; ``offset`` != 0 makes a bad model: bicubic plus that constant."""
    torch.manual_seed(seed)
    model = HNDSR(**{k: dict(v) for k, v in TINY_MODEL.items()})
    if offset:
        with torch.no_grad():
            for name, p in model.autoencoder.decoder_tail.named_parameters():
                p.fill_(offset if name.endswith("bias") else 0.0)
    save_checkpoint(model, directory, stages=STAGES)
    return str(json.loads((directory / "config.json").read_text())["sha256"])


def register_as_champion(store: str, directory: Path) -> str:
    with tracking.step_run(store, "train_diffusion") as run:
        mlflow.log_artifacts(str(directory), artifact_path=tracking.CHECKPOINT_ARTIFACT)
    sha = json.loads((directory / "config.json").read_text())["sha256"]
    registration = registry.register_checkpoint(
        tracking_uri=store,
        run_id=run.info.run_id,
        sha256=sha,
        figures=promotion.Figures(10.0, float("nan")),
        eval_data="elsewhere",
        lpips_tolerance=0.01,
    )
    assert registration.alias == promotion.CHAMPION
    return registration.version


def operator_drift(a: HNDSR, b: HNDSR) -> float:
    """||a - b|| / ||b|| over the operator's parameters."""
    pa = torch.cat([p.detach().flatten() for p in a.operator.parameters()])
    pb = torch.cat([p.detach().flatten() for p in b.operator.parameters()])
    return float((pa - pb).norm() / pb.norm())


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workdir, dict[str, Any], Path, str]:
    work = Workdir(tmp_path_factory.mktemp("finetune"))
    data = work.path / "raw"
    write_clean_set(data, n=14)
    init = work.path / "init"
    init_sha = tiny_checkpoint(init, seed=1)
    tiny_checkpoint(work.path / "bad", seed=2, offset=0.08)
    assert register_as_champion(work.store, work.path / "bad") == "1"
    result, _ = work.run(data, "finetune", str(init))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return work, json.loads((work.path / "finetune.json").read_text()), init, init_sha


def test_finetuning_starts_from_the_initial_weights(
    finetuned: tuple[Workdir, dict[str, Any], Path, str],
) -> None:
    work, _, init, init_sha = finetuned
    carried = _artifact_metadata(work.task_output("train-autoencoder"), "model")
    assert carried["mode"] == "carried over" and carried["steps"] == 0 and carried["sha256"] == init_sha
    initial, _ = load_checkpoint(init)
    for stage in ("operator", "diffusion"):
        meta = _artifact_metadata(work.task_output(f"train-{stage}"), "model")
        assert meta["mode"] == "fine-tuned" and meta["init_sha256"] == init_sha and meta["steps"] == 2
    operator_dir = Path(work.task_output("train-operator")["artifacts"]["model"]["artifacts"][0]["uri"])
    tuned, config = load_checkpoint(operator_dir)
    assert config["stages"] == ["autoencoder", "operator"]
    # Two small steps from the initial weights stay next to them; a fresh initialisation would not.
    torch.manual_seed(0)
    fresh = HNDSR(**{k: dict(v) for k, v in TINY_MODEL.items()})
    assert 0 < operator_drift(tuned, initial) < 0.05 < operator_drift(fresh, initial)


def test_challenger_beating_the_incumbent_is_promoted_and_both_are_recorded(
    finetuned: tuple[Workdir, dict[str, Any], Path, str],
) -> None:
    work, summary, _, _ = finetuned
    assert summary["alias"] == "champion" and summary["version"] == "2" and summary["champion_version"] == "2"
    x4 = summary["x4"]
    assert x4["incumbent_version"] == "1" and x4["model"]["psnr_y"] > x4["incumbent"]["psnr_y"] + 0.05
    client = MlflowClient(work.store)
    incumbent, challenger = (client.get_model_version("hndsr", v) for v in ("1", "2"))
    assert json.loads(incumbent.tags["challenged_by.v2"])["alias"] == "champion"
    assert float(challenger.tags["incumbent_psnr_y_x4"]) == pytest.approx(x4["incumbent"]["psnr_y"])
    assert "beats the champion" in json.loads(challenger.tags["promotion"])["reason"]
    evaluation = json.loads(
        Path(work.task_output("evaluate")["artifacts"]["evaluation"]["artifacts"][0]["uri"]).read_text()
    )
    assert evaluation["incumbent"]["version"] == "1"
    assert all("incumbent" in row for ev in evaluation["evaluations"] for row in ev["per_image"])


def test_a_margin_the_challenger_does_not_clear_keeps_the_incumbent(
    finetuned: tuple[Workdir, dict[str, Any], Path, str], tmp_path: Path
) -> None:
    """The same run against the new champion: identical weights gain 0 dB, under any positive margin.
    Then a genuinely new challenger (one more epoch) with a margin of 100 dB is registered, not promoted."""
    work, _, init, _ = finetuned
    data = work.path / "raw"
    result, _ = work.run(data, "margin", str(init), "--min-gain-db", "100", "--epochs", "1", "2", "1")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = json.loads((work.path / "margin.json").read_text())
    assert summary["alias"] == "challenger" and summary["champion_version"] == "2"
    assert "margin of 100 dB" in summary["reason"]
    assert "challenger v3" in result.stdout and "incumbent v2" in result.stdout and "bicubic" in result.stdout


def test_missing_init_from_fails_the_first_step_with_one_line(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    data = tmp_path / "raw"
    write_clean_set(data, n=6)
    result, _ = work.run(data, "missing", str(tmp_path / "no-such-checkpoint"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no such checkpoint directory" in error[0]
    assert not list((tmp_path / "root").glob("*/*"))  # checked before any task started


def test_missing_init_from_fails_the_pipelines_first_step(tmp_path: Path, tiny_params_text: str) -> None:
    """Where the pipeline is submitted (Kubeflow) the initial-model step is the check: it runs first."""
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        training_steps.pin_initial_model(
            str(tmp_path / "nope"), params=tiny_params_text, profile="", tracking_uri=""
        )


@pytest.fixture
def tiny_params_text() -> str:
    return json.dumps({"model": TINY_MODEL})


def test_tampered_init_from_is_refused(tmp_path: Path, tiny_params_text: str) -> None:
    tiny_checkpoint(tmp_path / "ckpt", seed=3)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"init_from .*sha256 mismatch"):
        training_steps.pin_initial_model(
            str(tmp_path / "ckpt"), params=tiny_params_text, profile="", tracking_uri=""
        )


def test_other_architecture_is_refused(tiny_params_text: str) -> None:
    with pytest.raises(CheckpointError, match=r"different architecture .* init_from: none"):
        training_steps.pin_initial_model("release", params=tiny_params_text, profile="", tracking_uri="")


def test_unknown_registry_alias_is_refused(tmp_path: Path, tiny_params_text: str) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny_checkpoint(tmp_path / "ckpt", seed=4)
    register_as_champion(store, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="has no hndsr@nope"):
        training_steps.pin_initial_model(
            "models:/hndsr@nope", params=tiny_params_text, profile="", tracking_uri=store
        )
    pinned = PinnedModel.from_json(
        training_steps.pin_initial_model(
            "models:/hndsr@champion", params=tiny_params_text, profile="", tracking_uri=store
        )
    )
    assert pinned.uri == "models:/hndsr/1" and pinned.version == "1" and len(pinned.sha256) == 64


def test_a_checkpoint_replaced_after_pinning_is_refused(tmp_path: Path, tiny_params_text: str) -> None:
    from components.initial import materialize

    tiny_checkpoint(tmp_path / "ckpt", seed=5)
    pinned = PinnedModel.from_json(
        training_steps.pin_initial_model(
            str(tmp_path / "ckpt"), params=tiny_params_text, profile="", tracking_uri=""
        )
    )
    shutil.rmtree(tmp_path / "ckpt")
    tiny_checkpoint(tmp_path / "ckpt", seed=6)
    with pytest.raises(CheckpointError, match="changed since this run resolved it"):
        materialize(pinned, tmp_path / "out", cache_dir=tmp_path / "cache")


def test_finetune_stages_must_run_to_the_last_stage() -> None:
    from hndsr.config import ConfigError, parse_params

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    raw["finetune"]["stages"] = ["operator"]  # diffusion would be stale on a changed operator
    with pytest.raises(ConfigError, match="must be a stage and every later one"):
        parse_params(raw)
    raw["finetune"]["stages"] = ["autoencoder", "operator", "diffusion"]
    raw["finetune"]["operator"] = {"steps": 7, "lr": 1e-4}
    tuned = parse_params(raw).finetuned("operator").train.operator
    assert (tuned.steps, tuned.lr) == (7, 1e-4)
    raw["finetune"]["operator"] = {"stepz": 7}
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_params(raw)
