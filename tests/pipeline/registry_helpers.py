"""Tiny checkpoints logged to a real MLflow store, as the train step logs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import torch
from synthetic import TINY_MODEL

from components import tracking
from components.promotion import Figures
from components.registry import Registration, register_checkpoint
from hndsr.checkpoint import save_checkpoint
from hndsr.models.hndsr_model import HNDSR

LPIPS_TOLERANCE = 0.01


def log_tiny_checkpoint(tracking_uri: str, directory: Path, seed: int) -> tuple[str, str]:
    """A distinct tiny checkpoint logged under a new run's ``checkpoint`` artifact -> (run id, sha256)."""
    torch.manual_seed(seed)
    model = HNDSR(**{k: dict(v) for k, v in TINY_MODEL.items()})
    save_checkpoint(model, directory, stages=["autoencoder", "operator", "diffusion"])
    config = (directory / "config.json").read_text()
    with tracking.step_run(tracking_uri, "train_diffusion") as run:
        mlflow.log_artifacts(str(directory), artifact_path=tracking.CHECKPOINT_ARTIFACT)
    return run.info.run_id, json.loads(config)["sha256"]


def register_logged(
    tracking_uri: str, logged: tuple[str, str], figures: Figures, eval_data: str = "d", **gate: Any
) -> Registration:
    """Register a checkpoint logged by ``log_tiny_checkpoint`` with its held-out figures (LPIPS
    tolerance 0.01 unless ``gate`` says otherwise)."""
    run_id, sha256 = logged
    gate.setdefault("lpips_tolerance", LPIPS_TOLERANCE)
    return register_checkpoint(
        tracking_uri=tracking_uri, run_id=run_id, sha256=sha256, figures=figures, eval_data=eval_data, **gate
    )
