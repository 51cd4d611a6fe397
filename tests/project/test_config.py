from pathlib import Path

import pytest
import torch

from hndsr.config import load_params, parse_params
from hndsr.data import PatchSampler, split_of
from hndsr.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_parse_with_every_profile() -> None:
    base = load_params(ROOT / "params.yaml")
    quick = load_params(ROOT / "params.yaml", profile="quick")
    assert base.train.operator.steps > quick.train.operator.steps
    assert quick.data.train_dir == "data/raw"
    assert quick.profile == "quick"
    # The time-cut profiles of quality_vs_minutes are the release recipe but for their step counts.
    for name in ("minutes25", "minutes50"):
        cut = load_params(ROOT / "params.yaml", profile=name)
        assert cut.model == base.model and cut.data == base.data
        assert cut.train.operator.lr == base.train.operator.lr
        assert cut.train.operator.steps < base.train.operator.steps


def test_overrides_are_dotted_and_typed() -> None:
    p = parse_params(
        {"train": {"operator": {"steps": 5}}}, overrides={"train.operator.lr": 0.01, "data.patch_size": 64}
    )
    assert p.train.operator.steps == 5 and p.train.operator.lr == 0.01 and p.data.patch_size == 64


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {"scale_min": 1.0}}, "scale_min"),
        ({"data": {"patch_size": 30}}, "patch_size"),
        ({"data": {"bogus": 1}}, "unknown keys"),
        ({"train": {"operator": {"stepz": 1}}}, "unknown keys"),
        ({"serving": {}}, "unknown top-level"),
        ({"train": {"operator": {"lr": 0}}}, "lr > 0"),
    ],
)
def test_invalid_params_are_explained(raw, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_overriding_an_aliased_section_does_not_leak() -> None:
    import yaml

    raw = yaml.safe_load("stage: &s {steps: 6}\ntrain:\n  autoencoder: *s\n  operator: *s\n")
    raw.pop("stage")
    p = parse_params(raw, overrides={"train.operator.steps": 3})
    assert (p.train.autoencoder.steps, p.train.operator.steps) == (6, 3)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="quick"):
        parse_params({"profiles": {"quick": {}}}, profile="fast")


def test_split_is_deterministic_and_follows_fractions() -> None:
    import hashlib

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_of(h, val_fraction=0.05, test_fraction=0.1) for h in hashes]
    assert splits == [split_of(h, val_fraction=0.05, test_fraction=0.1) for h in hashes]
    assert abs(splits.count("test") / 4000 - 0.10) < 0.02
    assert abs(splits.count("val") / 4000 - 0.05) < 0.02


def test_patch_sampler_is_seeded_and_scales_stay_in_range(image_dir) -> None:
    paths = sorted(image_dir.glob("*.png"))
    a = PatchSampler(paths, patch_size=48, scale_min=2.0, scale_max=4.0, seed=3, scale_power=2.0)
    b = PatchSampler(paths, patch_size=48, scale_min=2.0, scale_max=4.0, seed=3, scale_power=2.0)
    scales = []
    for _ in range(20):
        x, y = a.sample(2), b.sample(2)
        assert x.hr.shape == x.up.shape == (2, 3, 48, 48)
        assert (x.hr == y.hr).all() and (x.scale == y.scale).all()
        scales.append(float(x.scale[0]))
    assert min(scales) >= 2.0 - 1e-6 and max(scales) <= 4.0 + 0.2  # effective scale of a rounded LR size


def test_fixed_lr_patch_keeps_the_lr_patch_and_hands_the_lr_pixels(image_dir) -> None:
    """With fixed_lr_patch the HR patch follows the scale (96 px at x4, 48 at x2), so the LR patch an
    LR-grid operator reads stays 24 px; the batch carries those LR pixels and their taps."""
    paths = sorted(image_dir.glob("*.png"))
    sampler = PatchSampler(
        paths, patch_size=96, scale_min=2.0, scale_max=4.0, seed=0, scale_power=1.0, fixed_lr_patch=True
    )
    seen = set()
    for _ in range(30):
        b = sampler.sample(2)
        p = b.hr.shape[-1]
        assert p % 4 == 0 and 48 <= p <= 96 and b.up.shape == b.hr.shape
        assert b.lr is not None and abs(b.lr.lr.shape[-1] - 24) <= 1
        assert abs(float(b.scale[0]) - p / b.lr.lr.shape[-1]) < 1e-6
        torch.testing.assert_close(b.lr.upsample(b.lr.lr), b.up, rtol=0, atol=1e-5)
        seen.add(p)
    assert len(seen) > 3  # the patch really follows the scale
