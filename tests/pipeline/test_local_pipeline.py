"""The whole DAG under kfp.local (SubprocessRunner, this environment) on tiny generated data, through
the real ``hndsr pipeline run --local`` command, training from scratch (``--init-from none``): every
component's outputs, the MLflow runs, the release checkpoint registered as the incumbent and the tiny
challenger kept out of ``@champion``, the cached second run, and a failing step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from imagesets import write_broken_set, write_clean_set
from mlflow import MlflowClient
from synthetic import tiny_pipeline_params

from hndsr.checkpoint import load_checkpoint, release_checkpoint_dir
from serving.storage import resolve_storage_uri

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # whole pipelines in a module fixture

HNDSR = Path(sys.executable).parent / "hndsr"
TASKS = (
    "initial-model",
    "prepare",
    "validate",
    "train-autoencoder",
    "train-operator",
    "train-diffusion",
    "incumbent-model",
    "evaluate",
    "register",
)
UNCACHED = {"initial-model", "incumbent-model", "register"}  # they read the registry / make decisions


def tiny_params() -> str:
    # 8 held-out tiles: the first 3 are one smooth synthetic field, too few for "the release beats
    # bicubic" (the LR-grid release: -0.07 dB on those 3, +1.40 on these 8).
    return yaml.safe_dump(tiny_pipeline_params(evaluate_limit=8))


class Workdir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = f"sqlite:///{path / 'mlflow.db'}"
        (path / "params.yaml").write_text(tiny_params())

    def run(
        self, data: Path, name: str, init_from: str = "none", *extra: str
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cmd = [
            str(HNDSR), "pipeline", "run", "--local", "--data", str(data), "--profile", "ci", "--no-lpips",
            "--init-from", init_from, *extra,
            "--mlflow-uri", self.store, "--pipeline-root", str(self.path / "root"),
            "--summary-json", str(self.path / f"{name}.json"),
            "--code-version", "under-test",  # others may edit the shared tree meanwhile (test_fingerprints)
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(cmd, cwd=self.path, env=env, capture_output=True, text=True, timeout=900)
        return result, time.monotonic() - started

    def task_output(self, task: str) -> dict[str, Any]:
        """executor_output.json of the latest run of ``task`` (artifact metadata, parameter outputs)."""
        runs = sorted(p for p in (self.path / "root").glob("hndsr-training-*") if (p / task).is_dir())
        return dict(json.loads((runs[-1] / task / "executor_output.json").read_text()))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workdir, Path, dict[str, Any], float]:
    work = Workdir(tmp_path_factory.mktemp("pipeline"))
    data = work.path / "raw"
    write_clean_set(data, n=14)
    result, seconds = work.run(data, "first")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    # The release checkpoint became the incumbent (version 1); two steps of a tiny model do not beat it.
    assert "registered hndsr version 2 as challenger" in result.stdout
    return work, data, json.loads((work.path / "first.json").read_text()), seconds


def _artifact_metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(output["artifacts"][name]["artifacts"][0]["metadata"])


def test_every_component_produced_its_typed_outputs(
    first_run: tuple[Workdir, Path, dict[str, Any], float],
) -> None:
    work, _, summary, _ = first_run
    dataset = _artifact_metadata(work.task_output("prepare"), "dataset")
    assert dataset["tiles"]["train"] > 0 and dataset["tiles"]["test"] > 0 and dataset["data_version"]
    assert _artifact_metadata(work.task_output("validate"), "report")["evaluated"] > 10
    shas = []
    for stage in ("autoencoder", "operator", "diffusion"):
        meta = _artifact_metadata(work.task_output(f"train-{stage}"), "model")
        assert meta["stage"] == stage and meta["steps"] == 2 and len(meta["sha256"]) == 64
        assert meta["stages"][-1] == stage and meta["version"] and meta["mode"] == "from scratch"
        shas.append(meta["sha256"])
    assert len(set(shas)) == 3  # every stage changed the weights
    metrics = _artifact_metadata(work.task_output("evaluate"), "metrics")
    for scale in ("x2", "x3", "x4"):
        for who in ("model", "incumbent", "bicubic"):
            assert 10 < metrics[f"{who}_psnr_y_{scale}"] < 60
    assert not any("lpips" in key for key in metrics)  # --no-lpips: not measured, not faked
    # The release checkpoint, scored as the incumbent on the same tiles, beats bicubic there.
    assert metrics["incumbent_psnr_y_x4"] > metrics["bicubic_psnr_y_x4"]

    # Every artifact a person opens has its real name beside the KFP artifact; the CLI links them.
    assert (
        Path(summary["report"]).name == "report.html" and Path(summary["model_card"]).name == "model_card.md"
    )
    assert Path(summary["evaluation"]).name == "evaluation.json"
    assert json.loads(Path(summary["evaluation"]).read_text())["incumbent"]["version"] == "1"
    validation = Path(work.task_output("validate")["artifacts"]["report"]["artifacts"][0]["uri"])
    assert json.loads(validation.with_name("validation.json").read_text()) == json.loads(
        validation.read_text()
    )
    for key in ("report", "evaluation", "model_card"):
        assert summary["links"][key] == Path(summary[key]).resolve().as_uri()
    report = Path(summary["report"]).read_text()
    assert report == Path(summary["report"]).with_name("report").read_text()  # the KFP visualization
    # The verdict leads: x4 challenger vs incumbent vs bicubic and the gate's decision (the tiny model
    # loses); the data and code versions; best and worst image at every scale: LR, bicubic, incumbent,
    # challenger, HR and three difference maps each; delta charts per reference and per-image per scale.
    verdict = report[report.index('id="verdict"') : report.index("</p>", report.index('id="verdict"'))]
    assert "incumbent v1" in verdict and "bicubic" in verdict and "Decision: CHALLENGER" in verdict
    assert "under-test" in report and dataset["data_version"] in report
    assert report.count("data:image/png;base64,") == 3 * 2 * 8
    assert "Challenger minus bicubic" in report and report.count("<svg") == 2 + 3
    assert report.count('data-winner="incumbent v1"') >= 1
    card = Path(summary["model_card"]).read_text()
    assert "challenger" in card and shas[-1] in card
    assert "## Intended use" in card and "## Limitations" in card and "profile **ci**" in card
    assert "## Where it loses" in card and "PSNR-Y (dB): " in card  # the tiny model loses at x4
    assert summary["x4"]["n_images"] == 8 and summary["champion_version"] == "1"
    assert summary["x4"]["incumbent_version"] == "1" and summary["gate"]["min_gain_db"] == 0.05


def test_mlflow_has_every_step_with_epochs_and_the_decision(
    first_run: tuple[Workdir, Path, dict[str, Any], float],
) -> None:
    work, _, _, _ = first_run
    client = MlflowClient(work.store)
    experiment = client.get_experiment_by_name("hndsr")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_step = {r.data.tags["hndsr.step"]: r for r in runs}
    assert set(by_step) == {"pipeline", "register_release", "prepare", "validate", "evaluate", "register"} | {
        f"train_{stage}" for stage in ("autoencoder", "operator", "diffusion")
    }
    # one parent run per pipeline run, every step nested under it; a model-training experiment
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = by_step["pipeline"]
    assert parent.data.tags["hndsr.code_version"] == "under-test" and "summary.json" in {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    nested = {
        r.data.tags["hndsr.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert nested == set(by_step) - {"pipeline"}
    # the evaluate run charts model, incumbent and bicubic under one name per metric and scale
    evaluate_metrics = set(by_step["evaluate"].data.metrics)
    assert {"psnr_y_x4/model", "psnr_y_x4/incumbent", "psnr_y_x4/bicubic"} <= evaluate_metrics
    # the data-quality verdict, readable
    assert by_step["validate"].data.tags["hndsr.data_quality"].startswith("PASSED")
    assert "data_quality.md" in {a.path for a in client.list_artifacts(by_step["validate"].info.run_id)}
    assert all(r.info.status == "FINISHED" for r in runs)
    history = client.get_metric_history(by_step["train_operator"].info.run_id, "operator.train_l1")
    assert [m.step for m in history] == [1, 2]  # one point per epoch
    assert by_step["train_operator"].data.params["train.steps"] == "2"
    artifacts = {a.path for a in client.list_artifacts(by_step["train_diffusion"].info.run_id, "checkpoint")}
    assert artifacts == {"checkpoint/config.json", "checkpoint/model.safetensors"}
    register = by_step["register"].data
    assert register.tags["promotion.alias"] == "challenger" and register.tags["promotion.version"] == "2"
    assert register.tags["promotion.champion_version"] == "1"
    assert {"candidate_psnr_y_x4", "champion_psnr_y_x4"} <= set(register.metrics)
    release, challenger = (client.get_model_version("hndsr", v) for v in ("1", "2"))
    assert release.tags["source"] == "release" and "champion" in release.aliases
    assert json.loads(release.tags["challenged_by.v2"])["alias"] == "challenger"
    assert challenger.tags["incumbent_version"] == "1"
    # the version leads to its evaluate run, report, model card and baselines
    assert challenger.tags["evaluate_run_id"] == by_step["evaluate"].info.run_id
    assert challenger.tags["report"] == f"runs:/{by_step['evaluate'].info.run_id}/report.html"
    assert challenger.tags["model_card"].endswith("/model_card.md") and "bicubic_psnr_y_x4" in challenger.tags
    assert "report: runs:/" in (challenger.description or "")
    assert challenger.tags["pipeline_run_id"] == parent.info.run_id
    assert float(challenger.tags["incumbent_psnr_y_x4"]) > float(challenger.tags["psnr_y_x4"])
    assert {"report.html", "evaluation.json"} <= {
        a.path for a in client.list_artifacts(by_step["evaluate"].info.run_id)
    }
    assert "validation.json" in {a.path for a in client.list_artifacts(by_step["validate"].info.run_id)}
    assert "model_card.md" in {a.path for a in client.list_artifacts(by_step["register"].info.run_id)}


def test_registered_versions_load_as_serving_loads_them(
    first_run: tuple[Workdir, Path, dict[str, Any], float], tmp_path: Path
) -> None:
    work, _, _, _ = first_run
    mlflow.set_tracking_uri(work.store)
    champion, _ = load_checkpoint(resolve_storage_uri("models:/hndsr@champion", cache_dir=tmp_path))
    assert champion.config == load_checkpoint(release_checkpoint_dir())[0].config
    _, config = load_checkpoint(resolve_storage_uri("models:/hndsr@challenger", cache_dir=tmp_path))
    assert config["stages"] == ["autoencoder", "operator", "diffusion"]
    diffusion = _artifact_metadata(work.task_output("train-diffusion"), "model")
    assert config["sha256"] == diffusion["sha256"]


def test_unchanged_second_run_is_served_from_the_cache(
    first_run: tuple[Workdir, Path, dict[str, Any], float],
) -> None:
    work, data, first, first_seconds = first_run
    result, seconds = work.run(data, "second")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    hits = [task for task in TASKS if f"Task {task} cache hit" in log]
    # Everything but the registry's steps; the incumbent is the same version, so evaluate is a hit.
    assert hits == [task for task in TASKS if task not in UNCACHED], log[-4000:]
    second = json.loads((work.path / "second.json").read_text())
    assert second["version"] == first["version"] == "2" and "already registered" in second["reason"]
    assert second["report"] == first["report"]  # the cached evaluation's report
    assert len(MlflowClient(work.store).search_model_versions("name='hndsr'")) == 2
    assert seconds < first_seconds / 2, (seconds, first_seconds)


def test_failing_step_stops_the_pipeline_with_its_error(tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    data = tmp_path / "broken"
    write_broken_set(data)  # a reject rate far over validate.max_reject_rate
    result, _ = work.run(data, "broken")
    assert result.returncode == 2
    assert "Inner task failed: 'validate'" in result.stderr and "Traceback" not in result.stderr
    assert "FAILED [ingest]" in result.stdout  # the task's own message, streamed from its log
    assert not list((tmp_path / "root").glob("*/train-autoencoder"))  # nothing ran after the failure
    assert not (tmp_path / "broken.json").exists()
