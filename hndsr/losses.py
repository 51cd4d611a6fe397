"""The objective of each training stage: its loss on a batch, and the diffusion's noise unit.

The same loss serves one process and a data-parallel rank (``shard``): the diffusion noise is drawn
for the global batch and sliced, so a sharded run computes the numbers one process would.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from hndsr.config import StageParams
from hndsr.data import Batch, PatchSampler
from hndsr.distributed import Shard
from hndsr.errors import ConfigError
from hndsr.models.hndsr_model import HNDSR, STAGES
from hndsr.models.operator import LRInput
from hndsr.runtime import native_bf16

logger = logging.getLogger(__name__)


def _bf16(cfg: StageParams, device: torch.device) -> bool:
    return cfg.precision == "bf16" and native_bf16(device.type)


def _pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str) -> torch.Tensor:
    # MSE is what PSNR measures: fine-tuning on new imagery gained more with it than with L1.
    return F.mse_loss(sr, hr) if kind == "mse" else F.l1_loss(sr, hr)


def _spectral_l1(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    # fp32 FFT ("ortho" keeps the term's scale independent of the patch size).
    diff = torch.fft.rfft2(sr - hr, norm="ortho")
    return torch.view_as_real(diff).abs().mean()


def stage_loss(
    model: HNDSR, stage: str, batch: Batch, cfg: StageParams, shard: Shard | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of ``stage`` on ``batch``; with ``shard``, ``batch`` is those rows of the global batch and
    the diffusion noise is drawn for the global batch and sliced, as one process would draw it."""
    hr, up, scale = batch.hr, batch.up, batch.scale
    ae = model.autoencoder
    if stage == "autoencoder":
        with torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=_bf16(cfg, hr.device)):
            recon, latent = ae(hr, up)
        recon, latent = recon.float(), latent.float()
        l1 = F.l1_loss(recon, hr)
        reg = latent.pow(2).mean()
        return l1 + cfg.latent_weight * reg, {"l1": l1.item(), "latent_l2": reg.item()}
    if stage == "operator":
        with torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=_bf16(cfg, hr.device)):
            prior = model.prior(up, scale, batch.lr)
            sr = ae.decode(prior, up)
            if cfg.train_decoder:
                recon, target = ae(hr, up)
            else:
                with torch.no_grad():
                    target = ae.encode(hr, up)
        pixel = _pixel_loss(sr.float(), hr, cfg.pixel_loss)
        latent = F.mse_loss(prior.float(), target.detach().float())
        loss = pixel + cfg.latent_weight * latent
        parts = {cfg.pixel_loss: pixel.item(), "latent_mse": latent.item()}
        if cfg.fft_weight > 0:
            spectral = _spectral_l1(sr.float(), hr)
            loss = loss + cfg.fft_weight * spectral
            parts["fft_l1"] = spectral.item()
        if cfg.train_decoder:
            recon_l1 = F.l1_loss(recon.float(), hr)
            encoder_l2 = target.float().pow(2).mean()
            loss = loss + cfg.recon_weight * recon_l1 + cfg.encoder_l2 * encoder_l2
            parts["recon_l1"] = recon_l1.item()
            parts["latent_l2"] = encoder_l2.item()
        return loss, parts
    if stage == "diffusion":
        bf16 = torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=_bf16(cfg, hr.device))
        with torch.no_grad(), bf16:
            std = model.residual_std.view(1, -1, 1, 1)
            prior = model.prior(up, scale, batch.lr).float()
            x0 = (ae.encode(hr, up).float() - prior) / std
        n = shard.total if shard else x0.shape[0]
        rows = shard.rows if shard else slice(None)
        noise = torch.randn((n, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)[rows]
        t = torch.randint(0, model.scheduler.config.num_train_timesteps, (n,), device=x0.device)[rows]
        x_t = model.scheduler.add_noise(x0, noise, t)
        with bf16:
            eps = model.unet(x_t, t, prior / std, scale)
        mse = F.mse_loss(eps.float(), noise)
        return mse, {"eps_mse": mse.item()}
    raise ConfigError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")


@torch.no_grad()
def calibrate_residual_std(
    model: HNDSR, sampler: PatchSampler, *, batches: int, batch_size: int, device: torch.device
) -> None:
    """Per-channel std of (encoder latent - operator prior): the diffusion's unit of noise."""
    sq = torch.zeros(model.latent_channels, device=device)
    n = 0
    for _ in range(batches):
        b = sampler.sample(batch_size).to(device)
        r = model.autoencoder.encode(b.hr, b.up) - model.prior(b.up, b.scale, b.lr)
        sq += r.pow(2).mean(dim=(0, 2, 3))
        n += 1
    model.residual_std.copy_((sq / n).sqrt().clamp_min(1e-4))
    logger.info("calibrated residual std: %s", [round(float(v), 4) for v in model.residual_std])


class StageObjective(nn.Module):
    """``stage_loss`` as a module: DistributedDataParallel hooks its gradient averaging into a forward."""

    def __init__(self, model: HNDSR, stage: str, cfg: StageParams, shard: Shard | None) -> None:
        super().__init__()
        self.model, self.stage, self.cfg, self.shard = model, stage, cfg, shard

    def forward(
        self, hr: torch.Tensor, up: torch.Tensor, scale: torch.Tensor, lr: LRInput | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch = Batch(hr=hr, up=up, scale=scale, lr=lr)
        return stage_loss(self.model, self.stage, batch, self.cfg, self.shard)
