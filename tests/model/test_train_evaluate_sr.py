"""A tiny end-to-end run on generated images: train (3 stages) -> evaluate -> sr, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from synthetic import synthetic_aerial, write_tiny_params
from typer.testing import CliRunner

from hndsr.image_read import read_image
from hndsr_cli import app

runner = CliRunner()


def _params(tmp_path: Path, data: Path) -> Path:
    stage = {"steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "steps_per_epoch": 3}
    return write_tiny_params(tmp_path / "params.yaml", data, **stage)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    data = tmp / "hr"
    data.mkdir()
    from PIL import Image

    for i in range(8):
        Image.fromarray(synthetic_aerial((96, 104), seed=i)).save(data / f"img_{i}.png")
    params = _params(tmp, data)
    out = tmp / "run"
    result = runner.invoke(
        app, ["train", "--stage", "all", "--params", str(params), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return tmp, out, params


def test_train_writes_a_verified_checkpoint_with_all_stages(trained) -> None:
    _, out, _ = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stages"] == ["autoencoder", "operator", "diffusion"]
    assert set(cfg["metadata"]) >= {"autoencoder", "operator", "diffusion"}
    assert (out / "state" / "operator.pt").is_file()


def test_resume_is_a_no_op_when_a_stage_is_complete(trained) -> None:
    _, out, params = trained
    before = (out / "model.safetensors").read_bytes()
    result = runner.invoke(
        app, ["train", "--stage", "operator", "--params", str(params), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").read_bytes() == before


def test_stage_order_is_enforced(tmp_path, trained) -> None:
    _, _, params = trained
    result = runner.invoke(
        app, ["train", "--stage", "diffusion", "--params", str(params), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "needs the autoencoder, operator stage(s) first" in result.output


def test_evaluate_writes_the_documented_json(trained) -> None:
    tmp, out, params = trained
    js = tmp / "eval.json"
    args = [
        "evaluate",
        "--data",
        str(tmp / "hr"),
        "--checkpoint",
        str(out),
        "--scale",
        "3",
        "--json",
        str(js),
    ]
    result = runner.invoke(app, [*args, "--no-lpips", "--limit", "3", "--params", str(params)])
    assert result.exit_code == 0, result.output
    report = json.loads(js.read_text())
    assert report["scale"] == 3 and report["steps"] == 0 and report["n_images"] == 3
    for side in ("model", "bicubic"):
        assert set(report[side]) == {"psnr_y", "ssim_y", "lpips", "ergas", "sam"}
        assert 10 < report[side]["psnr_y"] < 60
    assert report["seconds_per_megapixel"] > 0


def test_sr_png_deterministic_and_diffusion(trained) -> None:
    tmp, out, _ = trained
    src = tmp / "hr" / "img_0.png"
    for steps, name in ((0, "det.png"), (2, "diff.png")):
        dst = tmp / name
        result = runner.invoke(
            app, ["sr", str(src), str(dst), "--scale", "2.5", "--checkpoint", str(out), "--steps", str(steps)]
        )
        assert result.exit_code == 0, result.output
        r = read_image(dst)
        assert (r.height, r.width) == (240, 260) and r.bands == 3


def test_sr_geotiff_keeps_georeferencing_and_extra_bands(trained) -> None:
    tmp, out, _ = trained
    src, dst = tmp / "naip.tif", tmp / "naip_x4.tif"
    rgb = synthetic_aerial((40, 48), seed=3).transpose(2, 0, 1)
    nir = np.full((1, 40, 48), 200, np.uint8)
    transform = from_origin(500000.0, 4100000.0, 1.0, 1.0)
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=48,
        height=40,
        count=4,
        dtype="uint8",
        crs="EPSG:32618",
        transform=transform,
    ) as f:
        f.write(np.concatenate([rgb, nir]))
    result = runner.invoke(app, ["sr", str(src), str(dst), "--scale", "4", "--checkpoint", str(out)])
    assert result.exit_code == 0, result.output
    with rasterio.open(dst) as f:
        assert f.count == 4 and (f.height, f.width) == (160, 192)
        assert f.crs.to_epsg() == 32618
        assert f.transform.a == pytest.approx(0.25) and f.transform.e == pytest.approx(-0.25)
        assert (f.transform.c, f.transform.f) == (500000.0, 4100000.0)
        assert abs(int(f.read(4).mean()) - 200) <= 1  # NIR carried (bicubic)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "5"], "between 2 and 4"),
        (["--scale", "1.5"], "between 2 and 4"),
        (["--steps", "-1"], "steps must be in"),
    ],
)
def test_sr_bad_arguments_are_one_line_errors(trained, args, message) -> None:
    tmp, out, _ = trained
    result = runner.invoke(
        app, ["sr", str(tmp / "hr" / "img_0.png"), str(tmp / "o.png"), "--checkpoint", str(out), *args]
    )
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_sr_bad_inputs_are_one_line_errors(tmp_path, trained) -> None:
    _, out, _ = trained
    cases = {
        "missing.png": None,
        "empty.png": b"",
        "garbage.png": b"not an image at all",
        "doc.txt": b"hello",
    }
    tiny = tmp_path / "tiny.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    for name, content in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        result = runner.invoke(app, ["sr", str(p), str(tmp_path / "o.png"), "--checkpoint", str(out)])
        assert result.exit_code == 2, (name, result.output)
        assert result.output.startswith("error: ") and "Traceback" not in result.output
    result = runner.invoke(app, ["sr", str(tiny), str(tmp_path / "o.png"), "--checkpoint", str(out)])
    assert result.exit_code == 2 and "too small" in result.output
    assert not (tmp_path / "o.png").exists()


def test_sr_with_a_tampered_checkpoint_fails_loudly(tmp_path, trained) -> None:
    import shutil

    tmp, out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (bad / "model.safetensors").write_bytes(bytes(data))
    result = runner.invoke(
        app, ["sr", str(tmp / "hr" / "img_0.png"), str(tmp_path / "o.png"), "--checkpoint", str(bad)]
    )
    assert result.exit_code == 2 and "sha256 mismatch" in result.output
    assert not (tmp_path / "o.png").exists()


def test_callbacks_receive_per_epoch_metrics_and_resume_continues(tmp_path, trained) -> None:
    from hndsr.config import load_params
    from hndsr.training import train

    _, _, params_path = trained
    seen: list[tuple[str, int, int, dict[str, float]]] = []
    params = load_params(params_path, overrides={"train.operator.steps": 3})
    out = tmp_path / "cb"
    record = [lambda *a: seen.append(a)]
    train(params, out, stages=["autoencoder", "operator"], progress=False, callbacks=record)
    epochs = [(stage, epoch, step) for stage, epoch, step, _ in seen]
    assert epochs == [("autoencoder", 1, 3), ("autoencoder", 2, 6), ("operator", 1, 3)]
    assert "val_psnr_y_x4" in seen[-1][3] and "val_bicubic_psnr_y_x4" in seen[-1][3]
    # More steps later: the operator resumes from its state at step 3 instead of starting over.
    seen.clear()
    params = load_params(params_path, overrides={"train.operator.steps": 6})
    train(params, out, stages=["operator"], progress=False, callbacks=record)
    assert [(s, e, st) for s, e, st, _ in seen] == [("operator", 2, 6)]
