"""The shipped checkpoint still scores what its card says: x4 deterministic on the held-out images
recorded by benchmarks/release_report.py, through the same evaluation code (a wrong install, a
loader or inference change that costs quality fails here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tooling import missing

from hndsr.checkpoint import load_release_checkpoint, release_checkpoint_dir
from hndsr.evaluation import evaluate_images
from hndsr.inference import Upscaler

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("HNDSR_RELEASE_DATA", ROOT.parent / "shared" / "data" / "rsscn7"))
TOLERANCE_DB = 0.05


def _recorded() -> dict:
    return json.loads((release_checkpoint_dir() / "evaluation.json").read_text())["regression_check"]


def test_shipped_checkpoint_scores_its_recorded_x4_gain() -> None:
    recorded = _recorded()
    paths = [DATA / name for name in recorded["images"]]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        missing(f"the held-out images ({absent[0]})", "export HNDSR_RELEASE_DATA=/path/to/rsscn7")
    model, _ = load_release_checkpoint()
    result = evaluate_images(Upscaler(model), paths, scale=recorded["scale"], steps=recorded["steps"])
    assert result.n_images == len(paths)
    for row, model_db, bicubic_db in zip(
        result.per_image, recorded["model_psnr_y"], recorded["bicubic_psnr_y"], strict=True
    ):
        # Bicubic pins the protocol (degradation, border, Y); the model's score pins the weights.
        assert row["bicubic"]["psnr_y"] == pytest.approx(bicubic_db, abs=1e-3), row["path"]
        assert row["model"]["psnr_y"] == pytest.approx(model_db, abs=TOLERANCE_DB), row["path"]
    gain = sum(m - b for m, b in zip(recorded["model_psnr_y"], recorded["bicubic_psnr_y"], strict=True))
    measured = sum(r["model"]["psnr_y"] - r["bicubic"]["psnr_y"] for r in result.per_image)
    assert measured / len(paths) == pytest.approx(gain / len(paths), abs=TOLERANCE_DB)
