"""Staged training: autoencoder, then neural operator (autoencoder frozen), then diffusion (both frozen).

Every stage is seeded and resumable (a state file per stage, written at each epoch end), reports
per-epoch metrics through callbacks (the MLflow adapter plugs in there; the core never imports it)
and ends by writing a verified checkpoint.

The same code runs data-parallel under ``torchrun`` (see :mod:`hndsr.distributed`): each rank
trains on its block of the global batch, DistributedDataParallel averages the gradients, and rank 0
alone validates, logs, calls the callbacks and writes state files and checkpoints.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from hndsr.checkpoint import load_checkpoint, save_checkpoint
from hndsr.config import Params, StageParams
from hndsr.data import Batch, PatchSampler, images_in_split, validation_batches
from hndsr.distributed import (
    DistContext,
    PeerFailureError,
    context_from_env,
    is_peer_failure,
    process_group,
    quiet_unless_main,
)
from hndsr.errors import CheckpointError, ConfigError
from hndsr.image_quality import psnr_y
from hndsr.losses import StageObjective, calibrate_residual_std
from hndsr.models.hndsr_model import HNDSR, STAGES

logger = logging.getLogger(__name__)


class TrainingCallback(Protocol):
    def __call__(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_at(step: int, cfg: StageParams) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _freeze(model: HNDSR, stage: str, cfg: StageParams) -> list[torch.nn.Parameter]:
    trainable = model.stage_parameters(stage)
    if stage == "operator" and cfg.train_decoder:
        trainable += model.stage_parameters("autoencoder")
    ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return trainable


@torch.no_grad()
def validate(model: HNDSR, stage: str, val: dict[float, Batch], device: torch.device) -> dict[str, float]:
    """Y-PSNR (border = scale) of the stage's output vs bicubic on fixed validation crops."""
    model.eval()
    out: dict[str, float] = {}
    for scale, batch in val.items():
        b = batch.to(device)
        border = math.ceil(scale)
        if stage == "autoencoder":
            sr = model.autoencoder(b.hr, b.up)[0]
        else:
            sr = model.render(b.up, b.scale, lr=b.lr)
        tag = f"x{scale:g}"
        out[f"val_psnr_y_{tag}"] = psnr_y(sr.clamp(0, 1).cpu(), b.hr.cpu(), border=border)
        out[f"val_bicubic_psnr_y_{tag}"] = psnr_y(b.up.clamp(0, 1).cpu(), b.hr.cpu(), border=border)
    model.train()
    return out


def _state_path(out_dir: Path, stage: str) -> Path:
    return out_dir / "state" / f"{stage}.pt"


def train_stage(
    model: HNDSR,
    stage: str,
    params: Params,
    sampler: PatchSampler,
    val: dict[float, Batch],
    out_dir: Path,
    *,
    device: torch.device,
    callbacks: Iterable[TrainingCallback] = (),
    resume: bool = True,
    progress: bool = True,
    dist_ctx: DistContext | None = None,
) -> dict[str, float]:
    """Train one stage. Under torchrun (``dist_ctx`` of a joined process group) every rank calls this
    with the same arguments and seed; ``cfg.batch_size`` is the global batch."""
    ctx = dist_ctx or DistContext()
    cfg = params.train.stage(stage)
    ctx.check_batch(stage, cfg.batch_size)
    shard = ctx.shard(cfg.batch_size)
    model.to(device).train()
    trainable = _freeze(model, stage, cfg)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # An exponential moving average of the weights: validated, and saved at the end, in their place.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
        if cfg.ema_decay > 0
        else None
    )
    start_step = 0
    state_file = _state_path(out_dir, stage)
    if resume and state_file.is_file():
        # Every rank reads the same file (the run directory is shared storage in a multi-node job).
        state = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        logger.info("resuming stage %s at step %d from %s", stage, start_step, state_file)
    elif stage == "diffusion":
        calibrate_residual_std(model, sampler, batches=8, batch_size=cfg.batch_size, device=device)
    # Wrapped once the weights are final: DDP starts by broadcasting rank 0's parameters and buffers.
    objective = ctx.wrap(StageObjective(model, stage, cfg, shard), device)

    metrics: dict[str, float] = {}
    running: dict[str, float] = {}
    bar = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=stage,
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    saved_step = start_step
    for step in range(start_step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = sampler.sample(cfg.batch_size, shard.rows if shard else None).to(device)
        try:
            loss, parts = objective(batch.hr, batch.up, batch.scale, batch.lr)
            if torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: the gradients are averaged over ranks here
        except RuntimeError as exc:
            if ctx.distributed and is_peer_failure(exc):
                raise PeerFailureError(
                    f"rank {ctx.rank}: lost a peer of the {ctx.world_size}-process job at step {step} of "
                    f"stage {stage} ({str(exc).splitlines()[0][:200]}); run the job again to resume from "
                    f"{state_file} (step {saved_step})"
                ) from exc
            raise
        if not torch.isfinite(loss):
            raise RuntimeError(f"stage {stage}: non-finite loss at step {step}; lower train.{stage}.lr")
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in parts.items()})
        done = step + 1
        if done % cfg.steps_per_epoch == 0 or done == cfg.steps:
            n = done - (math.ceil(done / cfg.steps_per_epoch) - 1) * cfg.steps_per_epoch
            # Each rank saw its shard: the mean over ranks is the global batch's loss.
            metrics = ctx.mean({f"train_{k}": v / n for k, v in running.items()})
            running = {}
            saved_step = done
            if not ctx.is_main:
                continue
            if stage != "diffusion":
                averaged = cast(HNDSR, ema.module) if ema is not None else model
                metrics |= validate(averaged, stage, val, device)
            metrics["lr"] = _lr_at(step, cfg)
            metrics["seconds"] = time.perf_counter() - started
            epoch = math.ceil(done / cfg.steps_per_epoch)
            logger.info(
                "stage %s epoch %d step %d: %s",
                stage,
                epoch,
                done,
                {k: round(v, 4) for k, v in metrics.items()},
            )
            for cb in callbacks:
                cb(stage, epoch, done, metrics)
            state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_file.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "sampler": sampler.state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": done,
                },
                tmp,
            )
            tmp.replace(state_file)
    bar.close()
    if ema is not None:
        with torch.no_grad():
            for average, live in zip(ema.module.parameters(), model.parameters(), strict=True):
                live.copy_(average)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return metrics


def train(
    params: Params,
    out_dir: str | Path,
    *,
    stages: list[str] | None = None,
    init_checkpoint: str | Path | None = None,
    callbacks: Iterable[TrainingCallback] = (),
    resume: bool = True,
    progress: bool = True,
    on_stage_end: Callable[[str, Path], None] | None = None,
) -> Path:
    """Run ``stages`` in order and write a checkpoint to ``out_dir`` after each one.

    A later stage without ``init_checkpoint`` starts from the checkpoint already in ``out_dir``
    (the earlier stages' result); a stage's prerequisites missing there is an error.

    Launched by torchrun, this joins its process group (gloo on CPU, nccl on GPU, one GPU per local
    rank) and trains data-parallel; every rank uses the same seed and ``out_dir``.
    """
    stages = stages or list(STAGES)
    for s in stages:
        if s not in STAGES:
            raise ConfigError(f"unknown stage {s!r}: use one of {', '.join(STAGES)} or all")
    for s in stages:  # before joining the group: every rank fails fast with the same message
        context_from_env().check_batch(s, params.train.stage(s).batch_size)
    device = resolve_device(params.train.device)
    with process_group(device) as ctx, quiet_unless_main(ctx):
        return _train(
            params,
            Path(out_dir),
            stages,
            ctx,
            ctx.device(device),
            init_checkpoint=init_checkpoint,
            callbacks=callbacks,
            resume=resume,
            progress=progress,
            on_stage_end=on_stage_end,
        )


def _train(
    params: Params,
    out: Path,
    stages: list[str],
    ctx: DistContext,
    device: torch.device,
    *,
    init_checkpoint: str | Path | None,
    callbacks: Iterable[TrainingCallback],
    resume: bool,
    progress: bool,
    on_stage_end: Callable[[str, Path], None] | None,
) -> Path:
    # The same seed on every rank: identical samplers and noise, each rank keeping its shard.
    seed_everything(params.train.seed)
    if params.train.threads > 0:
        torch.set_num_threads(params.train.threads)
    elif ctx.distributed and device.type == "cpu":
        torch.set_num_threads(ctx.cpu_threads())  # ranks share the cores instead of oversubscribing
    done: list[str] = []
    meta: dict[str, Any] = {}
    source = Path(init_checkpoint) if init_checkpoint else (out if (out / "config.json").is_file() else None)
    if source is not None:
        model, cfg = load_checkpoint(source)
        done = list(cfg.get("stages", []))
        meta = dict(cfg.get("metadata", {}))
    else:
        model = HNDSR(**params.model)
    first = STAGES.index(stages[0])
    missing = [s for s in STAGES[:first] if s not in done]
    if missing:
        raise CheckpointError(
            f"stage {stages[0]} needs the {', '.join(missing)} stage(s) first: run `hndsr train --stage "
            f"{missing[0]}` into {out} (or pass --init-checkpoint DIR)"
        )
    d = params.data
    paths = images_in_split(d.train_dir, "train", val_fraction=d.val_fraction, test_fraction=d.test_fraction)
    val_paths = images_in_split(
        d.train_dir, "val", val_fraction=d.val_fraction, test_fraction=d.test_fraction
    )
    logger.info("training on %d images from %s (%d for validation)", len(paths), d.train_dir, len(val_paths))
    sampler = PatchSampler(
        paths,
        patch_size=d.patch_size,
        scale_min=d.scale_min,
        scale_max=d.scale_max,
        scale_power=d.scale_power,
        fixed_lr_patch=d.fixed_lr_patch,
        seed=params.train.seed,
    )
    val = validation_batches(val_paths or paths[:2], crop=d.val_crop, scales=(4.0,), limit=d.val_images)
    for stage in stages:
        state_file = _state_path(out, stage)
        if resume and stage in done and state_file.is_file():
            finished = int(torch.load(state_file, map_location="cpu", weights_only=False)["step"])
            if finished >= params.train.stage(stage).steps:
                logger.info("stage %s is already trained in %s (pass --no-resume to retrain it)", stage, out)
                continue
        metrics = train_stage(
            model,
            stage,
            params,
            sampler,
            val,
            out,
            device=device,
            callbacks=callbacks,
            resume=resume,
            progress=progress,
            dist_ctx=ctx,
        )
        # Later stages were trained on top of the old weights of this one: they are stale now.
        done = [s for s in STAGES[: STAGES.index(stage) + 1] if s in set(done) | {stage}]
        meta[stage] = {"final_metrics": metrics, "params": asdict(params.train.stage(stage))}
        # The exact data recipe (patches, scale distribution, split) beside each stage's parameters.
        meta["data"] = asdict(d) | {"train_images": len(paths), "val_images_in_split": len(val_paths)}
        meta["profile"] = params.profile
        if ctx.is_main:
            save_checkpoint(model.cpu(), out, stages=done, metadata=meta)
            model.to(device)
            if on_stage_end is not None:
                on_stage_end(stage, out)
    ctx.barrier()  # no rank leaves before the last checkpoint is written
    return out
