import pytest
import torch
import torch.nn.functional as F

from hndsr.inference import Upscaler
from hndsr.models.autoencoder import DetailAutoencoder
from hndsr.models.hndsr_model import HNDSR, resolve_config
from hndsr.models.operator import FourierNeuralOperator, LRInput, SpectralConv2d
from hndsr.models.unet import LatentUNet
from hndsr.resample import resize, sr_size


def test_spectral_conv_direct_equals_fft_route() -> None:
    conv = SpectralConv2d(5, kernel_size=9, modes=3)
    x = torch.randn(2, 5, 23, 31)
    assert torch.allclose(conv(x), conv.fft_conv(x), atol=1e-5)
    assert torch.allclose(conv(x), F.conv2d(x, conv.kernel()[:, None], padding=4, groups=5), atol=1e-5)


def test_spectral_kernel_is_band_limited() -> None:
    conv = SpectralConv2d(3, kernel_size=9, modes=2)
    spectrum = torch.fft.rfft2(torch.fft.ifftshift(conv.kernel().detach(), dim=(-2, -1)))
    # Only |ky| < 2 and kx < 2 may be non-zero.
    mask = torch.ones_like(spectrum.real, dtype=torch.bool)
    mask[:, :2, :2] = False
    mask[:, -1:, :2] = False
    assert spectrum[mask].abs().max() < 1e-6


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (4, 8)])
def test_operator_is_resolution_independent(size: tuple[int, int]) -> None:
    op = FourierNeuralOperator(width=8, depth=2, kernel_size=5, modes=2, cond_dim=8, latent_channels=4)
    out = op(torch.rand(2, 3, *size), torch.tensor([2.0, 3.3]))
    assert out.shape == (2, 4, size[0] // 4, size[1] // 4)


def test_operator_depends_on_scale() -> None:
    op = FourierNeuralOperator(width=8, depth=2, kernel_size=5, modes=2, cond_dim=8, latent_channels=4)
    for p in op.parameters():  # FiLM starts at identity; perturb it
        torch.nn.init.normal_(p, std=0.1)
    up = torch.rand(1, 3, 16, 16)
    assert not torch.allclose(op(up, torch.tensor([2.0])), op(up, torch.tensor([4.0])))


def test_autoencoder_starts_as_bicubic_and_keeps_shapes() -> None:
    ae = DetailAutoencoder(latent_channels=4, width=8)
    hr, up = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 32, 40)
    recon, latent = ae(hr, up)
    assert latent.shape == (2, 4, 8, 10)
    assert torch.equal(recon, up)  # zero-initialised tail: bicubic is the floor from step 0


def test_unet_handles_odd_latent_sizes() -> None:
    unet = LatentUNet(latent_channels=4, width=8, cond_dim=16)
    x = torch.randn(2, 4, 9, 7)
    out = unet(x, torch.tensor([1, 900]), torch.randn(2, 4, 9, 7), torch.tensor([2.0, 4.0]))
    assert out.shape == x.shape


def test_composite_deterministic_and_diffusion_paths(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config).eval()
    up = torch.rand(1, 3, 32, 32)
    scale = torch.tensor([4.0])
    with torch.no_grad():
        a = model.render(up, scale)
        b = model.render(up, scale)
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        d1 = model.render(up, scale, steps=3, initial_noise=noise)
        d2 = model.render(up, scale, steps=3, initial_noise=noise)
    assert a.shape == up.shape and torch.equal(a, b)
    assert torch.equal(d1, d2)
    with pytest.raises(ValueError, match="initial_noise"):
        model.render(up, scale, steps=2)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_config({"operator": {"widht": 3}})
    with pytest.raises(ValueError, match="unknown model config section"):
        resolve_config({"decoder": {}})


def _lr_grid_model() -> HNDSR:
    torch.manual_seed(0)
    model = HNDSR(
        operator={"grid": "lr", "width": 16, "depth": 2, "cond_dim": 16, "upsample_channels": 8},
        autoencoder={"width": 16, "latent_channels": 4},
        diffusion={"width": 16, "cond_dim": 32},
    ).eval()
    for p in model.parameters():  # zero-initialised tails and FiLM would hide the operator's effect
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("scale", [2.0, 2.5, 3.0, 4.0])
def test_lr_grid_operator_reads_the_lr_pixels_at_every_scale(scale: float) -> None:
    model = _lr_grid_model()
    lr = torch.rand(2, 3, 20, 18)
    out = sr_size((20, 18), scale)
    canvas = (out[0] // 4 * 4 + 4, out[1] // 4 * 4 + 4)  # padded to the latent factor
    low = LRInput.whole(lr, canvas)
    up = low.upsample(lr)
    prior = model.prior(up, torch.full((2,), scale), low)
    assert prior.shape == (2, 4, canvas[0] // 4, canvas[1] // 4)
    # The prior depends on the LR pixels themselves, not only through the bicubic image.
    other = LRInput.whole(torch.rand(2, 3, 20, 18), canvas)
    assert not torch.allclose(prior, model.prior(up, torch.full((2,), scale), other))
    with pytest.raises(ValueError, match="LR grid"):
        model.render(up, torch.full((2,), scale))


@pytest.mark.parametrize("scale", [2.0, 3.0, 3.7, 4.0])
def test_lr_grid_tiled_equals_whole(scale: float) -> None:
    """Each tile reads its own LR crop; the stitched result equals the whole-image render (the body's
    receptive field fits in the halo)."""
    model = _lr_grid_model()
    lr = torch.rand(3, 41, 37)
    engine = Upscaler(model, device="cpu")
    engine.autocast_dtype = None
    whole = engine.upscale(lr, scale=scale, tile=4096)
    tiled = engine.upscale(lr, scale=scale, tile=80, overlap=16, halo=24)
    assert whole.shape[-2:] == sr_size((41, 37), scale)
    assert (whole - resize(lr, whole.shape[-2:]).clamp(0, 1)).abs().mean() > 1e-3  # not plain bicubic
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)


def test_lr_grid_is_a_config_of_the_one_model_and_round_trips(tmp_path) -> None:
    from hndsr.checkpoint import load_checkpoint, save_checkpoint

    model = _lr_grid_model()
    save_checkpoint(model, tmp_path / "ckpt", stages=["autoencoder", "operator"])
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.needs_lr and loaded.config["operator"]["grid"] == "lr"
    assert not HNDSR().needs_lr  # the seed's design stays the default: released checkpoints load as they were
    with pytest.raises(ValueError, match="grid"):
        HNDSR(operator={"grid": "output"})
