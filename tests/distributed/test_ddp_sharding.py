"""Data-parallel building blocks, in one process: sharding rule, sharded sampling and loss, torchrun env."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from synthetic import TINY_MODEL

from hndsr.config import Params, StageParams, parse_params
from hndsr.data import Batch, PatchSampler, list_images
from hndsr.distributed import DistContext, Shard, context_from_env, is_peer_failure, shard_rows
from hndsr.errors import ConfigError
from hndsr.losses import stage_loss
from hndsr.models.hndsr_model import HNDSR
from hndsr.training import train

TORCHRUN_ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}


@given(world=st.integers(1, 8), per_rank=st.integers(1, 16))
def test_rank_shards_tile_the_global_batch(world: int, per_rank: int) -> None:
    total = world * per_rank
    rows = [shard_rows(total, rank, world) for rank in range(world)]
    assert [i for r in rows for i in range(total)[r]] == list(range(total))
    assert {r.stop - r.start for r in rows} == {per_rank}


def test_a_global_batch_that_does_not_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        shard_rows(10, 0, 4)
    with pytest.raises(ConfigError, match=r"train\.operator\.batch_size = 6 .* multiple of 4"):
        DistContext(rank=0, world_size=4).check_batch("operator", 6)


def test_sharded_samples_are_rows_of_the_single_process_batch(image_dir: Path) -> None:
    paths = list_images(image_dir)
    samplers = [PatchSampler(paths, patch_size=48, scale_min=2, scale_max=4, seed=3) for _ in range(3)]
    for _ in range(3):  # several draws: the generators must stay in step
        full = samplers[0].sample(6)
        halves = [samplers[1].sample(6, slice(0, 3)), samplers[2].sample(6, slice(3, 6))]
        assert torch.equal(torch.cat([h.hr for h in halves]), full.hr)
        assert torch.equal(torch.cat([h.up for h in halves]), full.up)
        assert torch.equal(torch.cat([h.scale for h in halves]), full.scale)
    assert torch.equal(samplers[1].state(), samplers[0].state())


@pytest.mark.parametrize("stage", ["autoencoder", "operator", "diffusion"])
def test_mean_of_shard_losses_is_the_global_batch_loss(image_dir: Path, stage: str) -> None:
    model = HNDSR(**TINY_MODEL)
    sampler = PatchSampler(list_images(image_dir), patch_size=48, scale_min=2, scale_max=4, seed=0)
    batch = sampler.sample(4)
    cfg = StageParams(latent_weight=0.1)
    torch.manual_seed(5)
    full, _ = stage_loss(model, stage, batch, cfg)
    shards = []
    for rows in (slice(0, 2), slice(2, 4)):
        torch.manual_seed(5)  # every rank draws the diffusion noise from the same seed
        part = Batch(hr=batch.hr[rows], up=batch.up[rows], scale=batch.scale[rows])
        shards.append(stage_loss(model, stage, part, cfg, Shard(rows, 4))[0])
    assert torch.allclose(torch.stack(shards).mean(), full, rtol=1e-5, atol=1e-7)


def test_torchrun_environment_is_read_and_incomplete_one_is_refused() -> None:
    assert context_from_env({}) == DistContext()
    ctx = context_from_env(TORCHRUN_ENV | {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.distributed, ctx.is_main) == (1, 2, 1, True, False)
    assert ctx.cpu_threads() >= 1
    assert ctx.device(torch.device("cpu")) == torch.device("cpu")
    assert ctx.device(torch.device("cuda")) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set: launch with torchrun"):
        context_from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_train_refuses_an_indivisible_global_batch_before_joining_the_group(
    tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (TORCHRUN_ENV | {"RANK": "0", "WORLD_SIZE": "2"}).items():
        monkeypatch.setenv(key, value)
    params: Params = parse_params(
        {
            "data": {"train_dir": str(image_dir), "patch_size": 48},
            "model": TINY_MODEL,
            "train": {"device": "cpu", "autoencoder": {"steps": 1, "batch_size": 3}},
        }
    )
    with pytest.raises(ConfigError, match=r"train\.autoencoder\.batch_size = 3 is the global batch"):
        train(params, tmp_path / "run", stages=["autoencoder"], progress=False)
    assert not torch.distributed.is_initialized()


def test_peer_failures_are_told_apart_from_other_errors() -> None:
    gloo = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:14232. This is typically ...")
    assert is_peer_failure(gloo)
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
