"""Real torchrun jobs on CPU (gloo, 2 processes) over tiny generated data.

One process and two processes with the same global batch give the same weights (up to float
reduction order); rank 0 alone writes; a killed rank fails the job loudly and a restart resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from synthetic import synthetic_aerial, write_tiny_params

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
STAGES = ("autoencoder", "operator", "diffusion")
# Adam divides by the root of the squared gradient, so reduction-order noise on tiny gradients moves
# a weight by up to a fraction of lr (1e-3) per step; anything systematic is far above this.
WEIGHT_ATOL = 2e-4


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(Path(__file__).parents[2]), "PYTHONUNBUFFERED": "1"}


def _write_params(tmp: Path, **stage_overrides: Any) -> Path:
    data = tmp / "hr"
    data.mkdir(exist_ok=True)
    for i in range(6):
        Image.fromarray(synthetic_aerial((96, 104), seed=i)).save(data / f"img_{i}.png")
    stage = {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "steps_per_epoch": 2}
    return write_tiny_params(tmp / "params.yaml", data, **(stage | stage_overrides))


def _records(folder: Path, rank: int) -> list[dict[str, Any]]:
    path = folder / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    params = _write_params(tmp)
    single = subprocess.run(
        [sys.executable, str(WORKER), str(params), str(tmp / "single"), str(tmp / "rec_single")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    logged = ["--log-dir", str(tmp / "logs"), "--redirects", "3"]  # one stdout/stderr file per rank
    job = subprocess.run(
        [*TORCHRUN, *logged, str(WORKER), str(params), str(tmp / "ddp"), str(tmp / "rec_ddp")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_match_one_process_with_the_same_global_batch(runs: Path, stage: str) -> None:
    one = torch.load(runs / "single" / "state" / f"{stage}.pt", weights_only=False)
    two = torch.load(runs / "ddp" / "state" / f"{stage}.pt", weights_only=False)
    assert one["step"] == two["step"] == 4
    assert one["model"].keys() == two["model"].keys()
    worst = max((one["model"][k].float() - two["model"][k].float()).abs().max().item() for k in one["model"])
    assert worst < WEIGHT_ATOL, f"{stage}: weights differ by {worst}"
    # The sampler advanced identically, and the logged (rank-averaged) losses match the global ones.
    assert torch.equal(one["sampler"], two["sampler"])
    curve = {
        (r["stage"], r["step"]): r["metrics"]
        for r in _records(runs / "rec_single", 0)
        if r["kind"] == "callback"
    }
    for r in _records(runs / "rec_ddp", 0):
        if r["kind"] == "callback" and r["stage"] == stage:
            ref = curve[(stage, r["step"])]
            for key in (k for k in ref if k.startswith("train_")):
                assert r["metrics"][key] == pytest.approx(ref[key], rel=1e-4), key


def test_rank_zero_alone_writes_state_checkpoints_callbacks_and_logs(runs: Path) -> None:
    assert _records(runs / "rec_ddp", 1) == []
    kinds = [r["kind"] for r in _records(runs / "rec_ddp", 0)]
    assert kinds.count("checkpoint") == 3 and kinds.count("stage_end") == 3
    assert kinds.count("callback") == kinds.count("torch.save") == 6  # 2 epochs x 3 stages
    cfg = json.loads((runs / "ddp" / "config.json").read_text())
    assert cfg["stages"] == list(STAGES)
    rank_logs = {p.parent.name: p.read_text() for p in (runs / "logs").rglob("stderr.log")}
    assert set(rank_logs) == {"0", "1"}
    assert "stage autoencoder epoch 2 step 4" in rank_logs["0"]
    assert "INFO" not in rank_logs["1"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """PID of the torchrun worker of ``rank`` among ``parent``'s children (read from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def _cli(tmp: Path, params: Path, out: Path, *sets: str) -> list[str]:
    args = ["-m", "hndsr_cli", "train", "--stage", "autoencoder", "--params", str(params), "--out", str(out)]
    return [*TORCHRUN, *args, "--no-progress", *(a for s in sets for a in ("--set", s))]


def test_a_killed_rank_fails_the_job_loudly_and_a_restart_resumes(tmp_path: Path) -> None:
    # A step budget the job cannot finish before the kill; the restart gets a short one.
    params = _write_params(tmp_path, steps=5000, steps_per_epoch=3)
    out = tmp_path / "run"
    state = out / "state" / "autoencoder.pt"
    job = subprocess.Popen(
        _cli(tmp_path, params, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not state.is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        victim = _rank_pid(job.pid, 1)
        assert state.is_file() and victim is not None, "the job never wrote its first state file"
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode != 0
    assert "Root Cause" in output and "rank      : 1" in output and "SIGKILL" in output, output[-3000:]
    assert not (out / "config.json").exists()

    saved = int(torch.load(state, weights_only=False)["step"])
    restart = subprocess.run(
        _cli(tmp_path, params, out, f"train.autoencoder.steps={saved + 3}"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"resuming stage autoencoder at step {saved}" in restart.stderr
    assert int(torch.load(state, weights_only=False)["step"]) == saved + 3
    assert json.loads((out / "config.json").read_text())["stages"] == ["autoencoder"]
