"""The project's dvc.yaml, run for real in a fresh git repository: repro, no-op repro, an experiment with a
changed param, and push/pull through the S3 remote of .dvc/config on the embedded SeaweedFS server.

Tiny on purpose: generated images, the tiny model, 2 steps per stage (a `ci` profile in the test's
params.yaml). The `sample` stage (a PyPI download) is recorded with `dvc commit` over generated images
instead of being run, so the test needs no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from imagesets import write_clean_set
from synthetic import TINY_MODEL

from lake.server import EmbeddedS3

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAIN_STAGES = ("train_autoencoder", "train_operator", "train_diffusion")

pytestmark = pytest.mark.slow


def _params() -> dict[str, object]:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(patch_size=48, val_crop=48, val_images=2, val_fraction=0.2, test_fraction=0.3)
    raw["model"] = TINY_MODEL
    raw["prepare"]["tile_size"] = 48
    raw["pipeline"] = {"profile": "ci", "lpips": "--no-lpips"}
    tiny = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "steps_per_epoch": 1}
    raw["profiles"]["ci"] = {"train.device": "cpu", "train.threads": 1} | {
        f"train.{stage}.{key}": value
        for stage in ("autoencoder", "operator", "diffusion")
        for key, value in tiny.items()
    }
    return raw


def _find(tree: object, section: str, key: str) -> list[object]:
    """Every value of ``section.key`` anywhere in a nested JSON tree."""
    found: list[object] = []
    if isinstance(tree, dict):
        if isinstance(tree.get(section), dict) and key in tree[section]:
            found.append(tree[section][key])
        for value in tree.values():
            found.extend(_find(value, section, key))
    elif isinstance(tree, list):
        for value in tree:
            found.extend(_find(value, section, key))
    return found


class Repo:
    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        exe = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
        result = subprocess.run(
            [exe, *args[1:]], cwd=self.path, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, s3_server: EmbeddedS3) -> Repo:
    path = tmp_path_factory.mktemp("clone")
    # What a clean clone holds: the pipeline, DVC's config and the code the stages depend on.
    for name in ("dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, path / name)
    ignore = shutil.ignore_patterns("__pycache__", "release")
    shutil.copytree(ROOT / "hndsr", path / "hndsr", ignore=ignore)
    shutil.copytree(ROOT / "data_validation", path / "data_validation", ignore=ignore)
    (path / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    (path / ".gitignore").write_text("/data/\n")
    env = {
        **os.environ,
        **s3_server.settings.env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "DVC_NO_ANALYTICS": "1",
    }
    r = Repo(path, env)
    r.run("git", "init", "-q")
    r.run("git", "config", "user.name", "t")
    r.run("git", "config", "user.email", "t@example.com")
    write_clean_set(path / "data" / "raw", n=10)
    r.run("dvc", "commit", "-f", "sample")  # the sample stage's output, recorded instead of downloaded
    r.run("git", "add", "-A")
    r.run("git", "commit", "-qm", "clone")
    return r


@pytest.fixture(scope="module")
def reproduced(repo: Repo) -> subprocess.CompletedProcess[str]:
    result = repo.run("dvc", "repro")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-qm", "repro")
    return result


def test_repro_runs_every_stage_and_writes_metrics(
    repo: Repo, reproduced: subprocess.CompletedProcess[str]
) -> None:
    for stage in ("prepare", "validate", *TRAIN_STAGES, "evaluate"):
        assert f"Running stage '{stage}'" in reproduced.stdout, reproduced.stdout
    assert "Running stage 'sample'" not in reproduced.stdout
    report = json.loads((repo.path / "reports" / "validation.json").read_text())
    assert report["success"] is True
    metrics = json.loads((repo.path / "reports" / "eval_x4.json").read_text())
    assert metrics["n_images"] >= 1 and {"psnr_y", "ssim_y"} <= set(metrics["model"])
    shown = repo.run("dvc", "metrics", "show", "--json").stdout
    assert "eval_x4.json" in shown and "psnr_y" in shown
    cfg = json.loads((repo.path / "data" / "models" / "diffusion" / "config.json").read_text())
    assert cfg["stages"] == ["autoencoder", "operator", "diffusion"]


def test_second_repro_does_nothing(repo: Repo, reproduced: subprocess.CompletedProcess[str]) -> None:
    again = repo.run("dvc", "repro")
    assert "Running stage" not in again.stdout, again.stdout
    assert "up to date" in repo.run("dvc", "status").stdout


def test_experiment_with_a_changed_param_reruns_only_what_depends_on_it(
    repo: Repo, reproduced: subprocess.CompletedProcess[str]
) -> None:
    exp = repo.run("dvc", "exp", "run", "-S", "evaluate.steps=1")
    assert "Running stage 'evaluate'" in exp.stdout
    assert not any(f"Running stage '{s}'" in exp.stdout for s in ("prepare", *TRAIN_STAGES)), exp.stdout
    metrics = json.loads((repo.path / "reports" / "eval_x4.json").read_text())
    assert metrics["steps"] == 1
    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    assert 1 in _find(shown, "evaluate", "steps")  # the experiment is recorded with its param
    repo.run("git", "checkout", "--", "params.yaml", "dvc.lock", "reports")


def test_push_and_pull_round_trip_through_s3(
    repo: Repo,
    reproduced: subprocess.CompletedProcess[str],
    s3_server: EmbeddedS3,
) -> None:
    repo.run("dvc", "push")
    keys = [o.object_name for o in s3_server.settings.client().list_objects("dvc", "hndsr/", recursive=True)]
    assert any(k.endswith(".dir") for k in keys) and len(keys) > 10
    shutil.rmtree(repo.path / ".dvc" / "cache")
    for out in ("data/processed", "data/models", "data/validation_docs"):
        shutil.rmtree(repo.path / out)
    repo.run("dvc", "pull")
    assert (repo.path / "data" / "processed" / "catalog.parquet").is_file()
    assert (repo.path / "data" / "models" / "diffusion" / "config.json").is_file()
    assert "up to date" in repo.run("dvc", "status").stdout
    assert "Running stage" not in repo.run("dvc", "repro").stdout
