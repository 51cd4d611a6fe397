from itertools import pairwise

import pytest
import torch

from hndsr.inference import Upscaler
from hndsr.models.hndsr_model import HNDSR
from hndsr.tiling import Stitcher, blend_window, plan_tiles


def _covered(tiles, h, w) -> torch.Tensor:
    seen = torch.zeros(h, w, dtype=torch.int32)
    for t in tiles:
        seen[t.y0 : t.y1, t.x0 : t.x1] += 1
    return seen


@pytest.mark.parametrize(("h", "w"), [(4, 4), (100, 36), (512, 512), (516, 1028), (1024, 260)])
def test_plan_covers_canvas_with_equal_tiles(h: int, w: int) -> None:
    tiles = plan_tiles(h, w, tile=256, overlap=32)
    assert bool((_covered(tiles, h, w) > 0).all())
    assert len({(t.height, t.width) for t in tiles}) == 1
    assert all(t.y0 % 4 == 0 and t.x0 % 4 == 0 for t in tiles)


def test_tile_zero_means_whole_image() -> None:
    assert len(plan_tiles(512, 768, tile=0, overlap=32)) == 1


def test_useful_parts_overlap_by_the_overlap() -> None:
    tiles = plan_tiles(64, 400, tile=128, overlap=16, halo=24)
    xs = sorted({t.x0 for t in tiles})
    width = tiles[0].width
    assert width <= 128 and xs[-1] + width == 400  # shrunk evenly to end at the border
    assert all(b - a == width - 2 * 24 - 16 for a, b in pairwise(xs[:-1]))
    assert xs[-1] - xs[-2] <= width - 2 * 24 - 16


def test_tiles_are_spread_evenly_to_limit_recomputation() -> None:
    tiles = plan_tiles(2048, 2048, tile=1024, overlap=32, halo=32)
    computed = sum(t.height * t.width for t in tiles)
    assert computed / (2048 * 2048) < 1.25


def test_halo_gets_zero_weight_inside_and_full_weight_at_borders() -> None:
    h, w = 64, 400
    tiles = plan_tiles(h, w, tile=128, overlap=16, halo=24)
    first, middle = tiles[0], tiles[1]
    wf = blend_window(first, h, w, 16, 24)
    wm = blend_window(middle, h, w, 16, 24)
    assert float(wf[:, 0].min()) == 1.0  # canvas border: full weight, no halo
    assert float(wf[:, -24:].abs().max()) == 0.0  # interior side: halo is context only
    assert float(wm[:, :24].abs().max()) == 0.0
    s = Stitcher(1, h, w, overlap=16, halo=24)
    for t in tiles:
        s.add(t, torch.ones(1, t.height, t.width))
    assert torch.allclose(s.result(), torch.ones(1, h, w))  # every pixel covered (result() checks)


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plan_tiles(30, 32, tile=16, overlap=4)  # not aligned
    with pytest.raises(ValueError):
        plan_tiles(64, 64, tile=16, overlap=16)
    with pytest.raises(ValueError, match="bigger tile"):
        plan_tiles(640, 640, tile=64, overlap=16, halo=24)


def test_window_never_zero_and_full_at_borders() -> None:
    tiles = plan_tiles(200, 200, tile=96, overlap=32)
    for t in tiles:
        w = blend_window(t, 200, 200, 32)
        assert float(w.min()) > 0.0
        if t.y0 == 0:
            assert torch.equal(w[0], w[w.shape[0] // 2])  # the outer row keeps its full weight
    corner = blend_window(tiles[0], 200, 200, 32)
    assert float(corner[0, 0]) == 1.0


def test_stitching_a_constant_gives_the_constant() -> None:
    h, w = 200, 148
    tiles = plan_tiles(h, w, tile=96, overlap=32)
    s = Stitcher(3, h, w, overlap=32)
    for t in tiles:
        s.add(t, torch.full((3, t.height, t.width), 0.7))
    assert torch.allclose(s.result(), torch.full((3, h, w), 0.7), atol=1e-6)


def test_a_whole_canvas_tile_is_returned_as_is() -> None:
    from hndsr.tiling import Tile

    values = torch.rand(3, 64, 80)
    s = Stitcher(3, 64, 80, overlap=16, halo=8)
    s.add(Tile(0, 0, 64, 80), values)
    assert torch.equal(s.result(), values)  # the accumulator path divides by weight 1: the same values


def test_tiles_after_a_whole_canvas_tile_are_blended_with_it() -> None:
    from hndsr.tiling import Tile

    first, second = torch.full((3, 64, 80), 0.2), torch.full((3, 32, 80), 0.8)
    s = Stitcher(3, 64, 80, overlap=16)
    s.add(Tile(0, 0, 64, 80), first)
    s.add(Tile(32, 0, 64, 80), second)
    out = s.result()
    assert torch.allclose(out[:, :16], torch.full((3, 16, 80), 0.2))  # only the first tile there
    assert float(out[:, 63].min()) > 0.2 and float(out[:, 63].max()) < 0.8  # a blend of both


@pytest.fixture
def perturbed_model(tiny_model_config) -> HNDSR:
    model = HNDSR(**tiny_model_config).eval()
    for name, p in model.named_parameters():
        if not name.startswith("unet") and float(p.detach().abs().sum()) == 0.0:
            torch.nn.init.normal_(p, std=0.05)  # make the zero-initialised residual tail do something
    return model


@pytest.mark.parametrize(("h", "w", "scale"), [(70, 93, 4.0), (41, 67, 2.5), (50, 50, 3.0), (9, 12, 4.0)])
def test_tiled_equals_whole_image_on_the_deterministic_path(perturbed_model, h, w, scale) -> None:
    up = Upscaler(perturbed_model, batch_size=3)
    lr = torch.rand(3, h, w)
    whole = up.upscale(lr, scale=scale, tile=0)
    # halo 48 px covers the tiny model's receptive field (11 latent px = 44 output px)
    tiled = up.upscale(lr, scale=scale, tile=128, overlap=16, halo=48)
    assert whole.shape == tiled.shape == (3, round(h * scale), round(w * scale))
    assert float((whole - tiled).abs().max()) < 1e-3


def test_outer_rows_are_not_grey(perturbed_model) -> None:
    lr = torch.ones(3, 40, 40)
    out = Upscaler(perturbed_model).upscale(lr, scale=4.0, tile=64, overlap=16, halo=8)
    assert float(out[:, 0].mean()) > 0.9 and float(out[:, -1].mean()) > 0.9


def test_diffusion_path_is_seeded(tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config).eval()
    up = Upscaler(model)
    lr = torch.rand(3, 20, 24)
    a = up.upscale(lr, scale=2.0, steps=3, seed=5, tile=32, overlap=8, halo=4)
    b = up.upscale(lr, scale=2.0, steps=3, seed=5, tile=32, overlap=8, halo=4)
    assert torch.equal(a, b)
