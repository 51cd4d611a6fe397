"""Data-parallel training under ``torchrun``: process group from its environment, rank helpers, sharding.

torchrun (and Kubeflow's PyTorchJob, which runs torchrun in every pod) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them everything
here is a no-op and training runs as one process.

Sharding rule: every rank draws the same GLOBAL batch from identically seeded generators and keeps
its contiguous block of rows, so the union of the rank batches is exactly the batch one process
would draw; DistributedDataParallel averages the gradients of equal-sized blocks, which equals the
gradient of the global batch's mean loss.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from hndsr.errors import ConfigError, HNDSRError

logger = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerFailureError(HNDSRError):
    """Another rank of the job died or became unreachable during a collective."""


# How gloo and NCCL word a dead or unreachable peer (they raise plain RuntimeErrors).
_PEER_FAILURE_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "nccl communicator was aborted",
    "remote process exited",
)


def is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _PEER_FAILURE_MARKERS)


@dataclass(frozen=True)
class Shard:
    """This rank's rows of a global batch: ``rows`` of ``total``."""

    rows: slice
    total: int

    @property
    def size(self) -> int:
        return self.rows.stop - self.rows.start


def shard_rows(global_batch: int, rank: int, world_size: int) -> slice:
    """Contiguous block of the global batch for ``rank``; ``global_batch`` must divide evenly."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if global_batch % world_size:
        raise ConfigError(
            f"global batch {global_batch} does not split evenly over {world_size} processes: "
            f"set train.<stage>.batch_size to a multiple of {world_size}"
        )
    per_rank = global_batch // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, state files, logs and tracking records."""
        return self.rank == 0

    def shard(self, global_batch: int) -> Shard | None:
        if not self.distributed:
            return None
        return Shard(shard_rows(global_batch, self.rank, self.world_size), global_batch)

    def check_batch(self, name: str, global_batch: int) -> None:
        if global_batch % self.world_size:
            raise ConfigError(
                f"train.{name}.batch_size = {global_batch} is the global batch and must split evenly over "
                f"{self.world_size} processes: use a multiple of {self.world_size}"
            )

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank; CPU stays CPU."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def cpu_threads(self) -> int:
        """Intra-op threads per rank: the cores this process may use, split over the ranks of the node."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.local_world_size)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel over ``module`` (gradients averaged across ranks), or the module itself."""
        if not self.distributed:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (every rank must pass the same keys in the same order)."""
        if not self.distributed or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist(), strict=True))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def context_from_env(env: dict[str, str] | None = None) -> DistContext:
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    missing = [k for k in ENV_VARS if k not in env]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
            "(e.g. `torchrun --nproc-per-node 2 -m hndsr.cli train ...`)"
        )
    return DistContext(
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env["LOCAL_RANK"]),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
    )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(device: torch.device, *, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of the block (a no-op for one process).

    A group that already exists (the caller set it up) is used and left alone.
    """
    ctx = context_from_env()
    if not ctx.distributed:
        yield ctx
        return
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend_for(device), timeout=timedelta(seconds=timeout_s))
        logger.log(
            logging.INFO if ctx.is_main else logging.DEBUG,
            "rank %d of %d (local %d) joined, backend %s",
            ctx.rank,
            ctx.world_size,
            ctx.local_rank,
            dist.get_backend(),
        )
    try:
        yield ctx
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def quiet_unless_main(ctx: DistContext, name: str = "hndsr") -> Iterator[None]:
    """Ranks other than 0 log warnings and errors only: one readable log per job."""
    log = logging.getLogger(name)
    previous = log.level
    if not ctx.is_main:
        log.setLevel(max(logging.WARNING, previous))
    try:
        yield
    finally:
        log.setLevel(previous)
