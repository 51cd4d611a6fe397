"""Entry point the torchrun tests launch: `hndsr.training.train` with every write recorded per rank.

Usage: ddp_worker.py PARAMS OUT RECORDS. Each rank appends what it wrote (state files, checkpoints,
callback calls) to RECORDS/rank<R>.jsonl, so a test can check that rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

import hndsr.training as training
from hndsr.config import load_params


def main(params_path: str, out: str, records: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    log = Path(records) / f"rank{rank}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)

    def record(kind: str, **fields: Any) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"kind": kind, **fields}) + "\n")

    real_save, real_checkpoint = torch.save, training.save_checkpoint

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        record("torch.save", path=str(f))
        real_save(obj, f, *args, **kwargs)

    def save_checkpoint(model: Any, path: Any, **kwargs: Any) -> Any:
        record("checkpoint", path=str(path), stages=kwargs.get("stages"))
        return real_checkpoint(model, path, **kwargs)

    torch.save = save  # type: ignore[assignment]
    training.save_checkpoint = save_checkpoint  # type: ignore[assignment]

    def callback(stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        record("callback", stage=stage, epoch=epoch, step=step, metrics=metrics)

    training.train(
        load_params(params_path),
        out,
        callbacks=[callback],
        progress=False,
        on_stage_end=lambda stage, path: record("stage_end", stage=stage),
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
