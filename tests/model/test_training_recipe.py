"""The release recipe's training options: the decoder trained with the operator, the encoder latent
L2, bf16 autocast, and the model options they rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hndsr.config import StageParams, parse_params
from hndsr.data import Batch
from hndsr.errors import ConfigError
from hndsr.losses import _spectral_l1, stage_loss
from hndsr.model_pass import autocast_dtype
from hndsr.models.hndsr_model import HNDSR
from hndsr.models.layers import activation
from hndsr.models.operator import FourierNeuralOperator
from hndsr.runtime import native_bf16
from hndsr.training import _freeze


def _batch(n: int = 2, size: int = 32) -> Batch:
    hr = torch.rand(n, 3, size, size)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    up = F.interpolate(lr, size=(size, size), mode="bicubic")
    return Batch(hr=hr, up=up, scale=torch.full((n,), 4.0))


def _step(model: HNDSR, cfg: StageParams) -> dict[str, torch.Tensor]:
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = _freeze(model, "operator", cfg)
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss, _ = stage_loss(model, "operator", _batch(), cfg)
    loss.backward()
    optimizer.step()
    return before


@pytest.mark.parametrize("train_decoder", [False, True])
def test_operator_stage_trains_the_autoencoder_only_when_asked(tiny_model_config, train_decoder) -> None:
    model = HNDSR(**tiny_model_config)
    # A decoder that starts as exact bicubic passes no gradient to the operator: start it elsewhere.
    torch.nn.init.normal_(model.autoencoder.decoder_tail.weight, std=0.01)
    before = _step(model, StageParams(train_decoder=train_decoder, recon_weight=0.5, encoder_l2=0.001))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("operator.") for k in changed)
    assert any(k.startswith("autoencoder.") for k in changed) is train_decoder
    assert not any(k.startswith("unet.") for k in changed)


def test_encoder_l2_is_reported_and_weighted(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config)
    batch = _batch()
    torch.manual_seed(1)
    plain, parts = stage_loss(model, "operator", batch, StageParams(train_decoder=True, recon_weight=0.5))
    weighted, _ = stage_loss(
        model, "operator", batch, StageParams(train_decoder=True, recon_weight=0.5, encoder_l2=10.0)
    )
    assert parts["latent_l2"] > 0
    assert weighted.item() == pytest.approx(plain.item() + 10.0 * parts["latent_l2"], rel=1e-4)


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16: autocast stays off")
def test_bf16_training_loss_is_close_to_fp32(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config)
    batch = _batch()
    fp32, _ = stage_loss(model, "operator", batch, StageParams(precision="fp32"))
    bf16, _ = stage_loss(model, "operator", batch, StageParams(precision="bf16"))
    assert bf16.dtype == torch.float32  # losses are computed in fp32 whatever the autocast
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


def test_precision_must_be_fp32_or_bf16() -> None:
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        parse_params({"train": {"operator": {"precision": "fp16"}}})


def test_autocast_dtype(monkeypatch) -> None:
    assert autocast_dtype(torch.device("cuda"), half=True) is torch.float16
    assert autocast_dtype(torch.device("cuda"), half=False) is None
    monkeypatch.setenv("HNDSR_CPU_BF16", "0")
    assert autocast_dtype(torch.device("cpu")) is None
    monkeypatch.delenv("HNDSR_CPU_BF16")
    expected = torch.bfloat16 if native_bf16("cpu") else None
    assert autocast_dtype(torch.device("cpu")) is expected


def test_operator_without_spectral_branch_has_no_spectral_weights() -> None:
    local = FourierNeuralOperator(width=16, depth=2, spectral=False)
    spectral = FourierNeuralOperator(width=16, depth=2, spectral=True)
    assert not any("spectral" in name for name, _ in local.named_parameters())
    assert any("spectral" in name for name, _ in spectral.named_parameters())
    up = torch.rand(1, 3, 32, 32)
    assert local(up, torch.tensor([3.0])).shape == spectral(up, torch.tensor([3.0])).shape


def test_unknown_activation_is_refused() -> None:
    assert isinstance(activation("silu"), torch.nn.SiLU)
    with pytest.raises(ValueError, match="relu"):
        activation("swish")


def test_ema_of_the_weights_is_what_the_stage_keeps(tmp_path, image_dir, tiny_model_config) -> None:
    """With a decay near 1 the average stays at the first step's weights (its first update copies
    them): three EMA steps end where one plain step ends, three plain steps elsewhere."""
    from hndsr.data import PatchSampler, images_in_split, validation_batches
    from hndsr.training import train_stage

    paths = images_in_split(image_dir, "train", val_fraction=0.0, test_fraction=0.0)
    val = validation_batches(paths[:1], crop=48, scales=(4.0,), limit=1)

    def run(steps: int, ema_decay: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = HNDSR(**tiny_model_config)
        torch.nn.init.normal_(model.autoencoder.decoder_tail.weight, std=0.01)  # else no operator gradient
        raw = {
            "data": {"patch_size": 48},
            "train": {
                "operator": {
                    "steps": steps,
                    "batch_size": 2,
                    "lr": 0.01,
                    "warmup_steps": 0,
                    "ema_decay": ema_decay,
                }
            },
        }
        params = parse_params(raw)
        sampler = PatchSampler(paths, patch_size=48, scale_min=4.0, scale_max=4.0, seed=0)
        out = tmp_path / f"{steps}-{ema_decay}"
        train_stage(model, "operator", params, sampler, val, out, device=torch.device("cpu"), progress=False)
        return {k: v.clone() for k, v in model.operator.state_dict().items()}

    one, ema3, plain3 = run(1, 0.0), run(3, 0.999999), run(3, 0.0)
    assert all(torch.allclose(one[k], ema3[k], atol=1e-5) for k in one)
    assert not all(torch.allclose(one[k], plain3[k], atol=1e-5) for k in one)


def test_ema_decay_outside_its_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        parse_params({"train": {"operator": {"ema_decay": 1.0}}})


def test_fft_weight_adds_the_spectral_l1_of_the_output_error(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config)
    torch.nn.init.normal_(model.autoencoder.decoder_tail.weight, std=0.01)
    batch = _batch()
    plain, parts = stage_loss(model, "operator", batch, StageParams())
    weighted, weighted_parts = stage_loss(model, "operator", batch, StageParams(fft_weight=0.5))
    assert "fft_l1" not in parts
    assert weighted_parts["fft_l1"] > 0
    assert weighted.item() == pytest.approx(plain.item() + 0.5 * weighted_parts["fft_l1"], rel=1e-4)
    # Parseval: with an orthonormal FFT, the spectral error of an exact output is zero, and scales
    # linearly with the error.
    model.eval()
    with torch.no_grad():
        sr = model.render(batch.up, batch.scale)
    assert _spectral_l1(batch.hr, batch.hr).item() == 0.0
    doubled = _spectral_l1(batch.hr + 2 * (sr - batch.hr), batch.hr).item()
    assert doubled == pytest.approx(2 * _spectral_l1(sr, batch.hr).item(), rel=1e-4)


def test_fft_weight_outside_its_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="fft_weight"):
        parse_params({"train": {"operator": {"fft_weight": -1.0}}})
