"""The training steps: the pinned initial model, the incumbent to beat, and one stage's training."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components import promotion, registry, tracking
from components.step_params import load
from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from hndsr.errors import InputError

logger = logging.getLogger(__name__)

STAGES = ("autoencoder", "operator", "diffusion")
# in-process: this step trains (one GPU); pytorchjob: a Kubeflow PyTorchJob trains under torchrun on
# N workers (components/pytorchjob.py; needs the shared training volume mounted in this step's pod).
TRAINING_BACKENDS = ("in-process", "pytorchjob")


def pin_initial_model(init_from: str, *, params: str, profile: str, tracking_uri: str) -> str:
    """``init_from`` resolved and verified (hash, architecture) -> the pinned identity the train steps
    receive (JSON). Raises with one line saying what is wrong and what to do."""
    from components.initial import pin_initial_model as pin

    with tempfile.TemporaryDirectory(prefix="hndsr-init-") as cache:
        pinned = pin(init_from, load(params, profile), tracking_uri=tracking_uri, cache_dir=cache)
    if pinned.uri:
        logger.info(
            "training starts from %s (sha256 %s, stages %s)", pinned.uri, pinned.sha256[:12], pinned.stages
        )
    else:
        logger.info("training starts from scratch (init_from none)")
    return pinned.to_json()


def resolve_incumbent(*, tracking_uri: str, model_name: str) -> str:
    """The model the challenger must beat: ``@champion``, or the release checkpoint (registered as the
    champion first) when the registry has none. JSON of its pinned identity."""
    from mlflow import MlflowClient

    from components.initial import PinnedModel

    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    current = registry.champion_version(client, model_name)
    if current is None:
        current = registry.register_release(tracking_uri, model_name)
    tags = current.tags or {}
    pinned = PinnedModel(
        init_from=f"models:/{model_name}@{promotion.CHAMPION}",
        uri=f"models:/{model_name}/{current.version}",
        sha256=tags.get("sha256", ""),
        version=str(current.version),
    )
    logger.info("incumbent: %s version %s (sha256 %s)", model_name, current.version, pinned.sha256[:12])
    return pinned.to_json()


# --------------------------------------------------------------------------------------------- train


def train_stage(
    stage: str,
    dataset_dir: str,
    out_dir: str,
    *,
    params: str,
    profile: str,
    epochs: int,
    tracking_uri: str,
    init_checkpoint: str = "",
    training_backend: str = "in-process",
    initial_model: str = "",
) -> dict[str, Any]:
    """Train one stage on the prepared train split, starting from ``init_checkpoint`` (earlier stages).

    ``initial_model`` is the run's pinned ``init_from`` (JSON; "" or none: from scratch). With one,
    the stages of ``finetune.stages`` continue training from its weights with the ``finetune.<stage>``
    recipe and the others are carried over unchanged; the first stage starts from it (not from
    ``init_checkpoint``). ``epochs`` > 0 overrides the steps (``epochs * steps_per_epoch``). Only the
    checkpoint (weights + config.json) lands in ``out_dir``; resumable state stays in a scratch folder.
    """
    from components.initial import PinnedModel, materialize
    from hndsr.training import train

    if training_backend not in TRAINING_BACKENDS:
        raise InputError(
            f"training_backend {training_backend!r} is not available: "
            f"use one of {', '.join(TRAINING_BACKENDS)}"
        )
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    overrides: dict[str, Any] = {
        "data.train_dir": str(Path(dataset_dir) / "train" / "hr"),
        "data.test_fraction": 0,  # prepare already held the test sources out
    }
    pinned = PinnedModel.from_json(initial_model)
    base = load(params, profile, overrides)
    finetuning = bool(pinned.uri)
    if finetuning:
        overrides |= base.finetune.overrides(stage)
    carried_over = finetuning and stage not in base.finetune.stages
    if epochs > 0:
        overrides[f"train.{stage}.steps"] = (
            epochs * load(params, profile, overrides).train.stage(stage).steps_per_epoch
        )
    p = load(params, profile, overrides)
    mode = "carried over" if carried_over else "fine-tuned" if finetuning else "from scratch"
    logged = {
        "stage": stage,
        "profile": profile or "base",
        "training_backend": training_backend,
        "init_from": pinned.init_from,
        "mode": mode,
    }
    with (
        tracking.step_run(
            tracking_uri, f"train_{stage}", params=logged | {"train": p.train.stage(stage).__dict__}
        ) as run,
        tempfile.TemporaryDirectory(prefix=f"hndsr-{stage}-") as work,
    ):
        if finetuning and stage == STAGES[0]:
            init_checkpoint = str(materialize(pinned, Path(work) / "initial", cache_dir=Path(work) / "cache"))
        if init_checkpoint:
            mlflow.set_tag("hndsr.init_sha256", read_checkpoint_config(init_checkpoint).get("sha256", ""))
        mlflow.set_tags({"hndsr.mode": mode, "hndsr.init_from": pinned.init_from})
        if carried_over:
            checkpoint = Path(init_checkpoint)
        elif training_backend == "pytorchjob":
            from components.pytorchjob import cli_args, train_stage_as_pytorchjob

            # Per-epoch metrics stay in the job's logs; this run records the final checkpoint.
            checkpoint = train_stage_as_pytorchjob(
                stage,
                overrides["data.train_dir"],
                params_text=params,
                run_id=run.info.run_id,
                init_checkpoint=init_checkpoint or None,
                extra_args=cli_args(profile, overrides),
            )
        else:
            checkpoint = train(
                p,
                work,
                stages=[stage],
                init_checkpoint=init_checkpoint or None,
                callbacks=[tracking.MlflowEpochLogger()],
                progress=False,
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(checkpoint / name, out / name)
        mlflow.log_artifacts(str(out), artifact_path=tracking.CHECKPOINT_ARTIFACT)
        config = read_checkpoint_config(out)
        mlflow.set_tag("hndsr.sha256", config["sha256"])
    return {
        "stage": stage,
        "stages": config["stages"],
        "version": config["package_version"],
        "sha256": config["sha256"],
        "mlflow_run_id": run.info.run_id,
        "steps": 0 if carried_over else p.train.stage(stage).steps,
        "mode": mode,
        "init_from": pinned.init_from,
        "init_sha256": pinned.sha256,
    }
