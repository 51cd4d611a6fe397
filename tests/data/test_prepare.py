"""hndsr prepare: tiles, LR pairs, catalog, hash split without leakage, rejects, idempotence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from imagesets import TILE, data_params, write_broken_set, write_clean_set, write_geotiff
from PIL import Image
from typer.testing import CliRunner

from hndsr.catalog import CATALOG_COLUMNS
from hndsr.config import parse_params
from hndsr.data import split_of
from hndsr.errors import ConfigError
from hndsr.prepare import PrepareConfig, prepare
from hndsr.source_metadata import source_metadata
from hndsr_cli import app


def _config(**overrides: object) -> PrepareConfig:
    return PrepareConfig.from_params(data_params(**overrides))


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def clean(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "raw"
    write_clean_set(src, n=8)
    (src / "LICENCE.txt").write_text("CC0\n")  # sidecars are neither images nor rejects
    return src, tmp_path / "processed"


def test_tiles_lr_pairs_and_catalog(clean: tuple[Path, Path]) -> None:
    src, out = clean
    result = prepare(src, out, _config())
    cat = pd.read_parquet(out / "catalog.parquet")
    assert list(cat.columns) == [*CATALOG_COLUMNS, "lr_x2", "lr_x3", "lr_x4"]
    assert len(cat) == 8 * 4 and result.summary["tiles"] == 32  # 104x100 -> 2x2 tiles of 48
    assert result.summary["ignored_sidecar_files"] == 1 and result.summary["rejected"] == 0
    row = cat.iloc[0]
    hr = out / row["filename"]
    assert hashlib.sha256(hr.read_bytes()).hexdigest() == row["sha256"]
    assert Image.open(hr).size == (TILE, TILE)
    for scale, side in ((2, 24), (3, 16), (4, 12)):
        lr = out / row[f"lr_x{scale}"]
        assert lr.parent.name == f"lr_x{scale}" and Image.open(lr).size == (side, side)
    assert len(row["band_mean"]) == 3 and all(0 <= v <= 1 for v in row["band_mean"])
    assert row["sharpness"] > 1.0 and row["nodata_fraction"] == 0.0
    assert row["source"].startswith(("fields/", "towns/")) and row["sensor"] is None


def test_split_is_the_hash_split_of_the_source_file_and_never_leaks(clean: tuple[Path, Path]) -> None:
    src, out = clean
    prepare(src, out, _config())
    cat = pd.read_parquet(out / "catalog.parquet")
    assert (cat.groupby("source")["split"].nunique() == 1).all()
    for source, split in cat.groupby("source")["split"].first().items():
        sha = hashlib.sha256((src / source).read_bytes()).hexdigest()
        assert split == split_of(sha, val_fraction=0.2, test_fraction=0.2)
        assert (cat.loc[cat["source"] == source, "source_sha256"] == sha).all()
    for row in cat.itertuples():
        assert row.filename.startswith(f"{row.split}/hr/")


def test_rerun_rewrites_nothing_and_removed_sources_disappear(clean: tuple[Path, Path]) -> None:
    src, out = clean
    prepare(src, out, _config())
    before = _mtimes(out)
    again = prepare(src, out, _config())
    assert again.written == 0 and again.removed == 0 and again.decoded_sources == 0
    assert _mtimes(out) == before
    # Without the state file every tile is encoded again, to the same bytes: still nothing written.
    (out / ".prepare-state.json").unlink()
    cold = prepare(src, out, _config())
    assert cold.written == 0 and cold.decoded_sources == 8
    gone = src / "towns" / "img_00.png"
    gone.unlink()
    after = prepare(src, out, _config())
    assert after.removed == 4 * 4  # 4 HR tiles + 3 LR each
    assert "towns/img_00.png" not in set(pd.read_parquet(out / "catalog.parquet")["source"])


def test_changed_params_retile(clean: tuple[Path, Path]) -> None:
    src, out = clean
    prepare(src, out, _config())
    result = prepare(src, out, _config(**{"prepare.tile_size": 96, "prepare.scales": [2]}))
    cat = pd.read_parquet(out / "catalog.parquet")
    assert len(cat) == 8 and "lr_x3" not in cat.columns and result.removed > 0
    assert not any((out / split / "lr_x4").exists() for split in ("train", "val", "test"))


def test_bad_inputs_are_rejected_with_their_reason(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    bad = write_broken_set(src)
    result = prepare(src, tmp_path / "out", _config())
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet").set_index("source")
    expected = {
        "truncated.png": "corrupt",
        "truncated.jpg": "corrupt",
        "empty.png": "empty",
        "scan.bmp": "unsupported",
        "towns/img_00_copy.png": "duplicate",
        "black.png": "all_nodata",
        "tiny.png": "too_small",
        "two_bands.tif": "too_few_bands",
    }
    assert rejects["reason"].to_dict() == expected
    assert "truncated" in rejects.loc["truncated.png", "detail"]
    assert "towns/img_00.png" in rejects.loc["towns/img_00_copy.png", "detail"]
    assert result.summary["rejected"] == len(expected) and result.summary["inputs"] == 6 + len(bad)
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert "blank.png" in set(cat["source"])  # blank but valid: validation, not prepare, flags it


def test_geotiff_keeps_bands_depth_and_georeferencing(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    write_geotiff(src / "naip_m_4709963_se_14_1_20180716.tif")
    prepare(src, tmp_path / "out", _config())
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    row = cat.sort_values(["tile_y", "tile_x"]).iloc[-1]
    assert (row["bands"], row["dtype"], row["crs"]) == (4, "uint16", "EPSG:26914")
    assert (row["sensor"], row["acquisition_date"]) == ("NAIP ADS100", "2018-07-16")  # tags win
    with rasterio.open(tmp_path / "out" / row["filename"]) as hr:
        assert hr.count == 4 and hr.dtypes[0] == "uint16" and hr.nodata == 0
        assert hr.transform.c == 485000.0 + row["tile_x"] and hr.transform.f == 5209000.0 - row["tile_y"]
    with rasterio.open(tmp_path / "out" / row["lr_x4"]) as lr:
        assert lr.shape == (12, 12) and lr.transform.a == pytest.approx(4.0)
        assert lr.transform.c == 485000.0 + row["tile_x"]


def test_nodata_tiles_are_dropped(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.mkdir()
    img = np.asarray(Image.open(write_clean_set(src, n=1)[0])).copy()
    img[:, :50] = 0  # left half is fill value: its tiles are all nodata
    Image.fromarray(img).save(src / "towns" / "img_00.png")
    result = prepare(src, tmp_path / "out", _config())
    assert result.summary["tiles"] == 2 and result.summary["dropped_tiles_nodata"] == 2


def test_metadata_from_known_file_names() -> None:
    assert source_metadata(Path("m_4709963_se_14_1_20090818.tif")) == ("NAIP", "2009-08-18")
    assert source_metadata(Path("2019_YELL_2_528000_4978000_image_crop2_y0_x0.png")) == ("NEON AOP", "2019")
    assert source_metadata(Path("scene_2021-03-04.png")) == (None, "2021-03-04")
    assert source_metadata(Path("a001.jpg")) == (None, None)


def test_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="tile_size"):
        parse_params({"prepare": {"tile_size": 16}})
    with pytest.raises(ConfigError, match="scales"):
        parse_params({"prepare": {"scales": [1.5]}})
    with pytest.raises(ConfigError, match="max_reject_rate"):
        parse_params({"validate": {"max_reject_rate": 2}})


def test_cli_prepare_reports_counts_and_fails_in_one_line(tmp_path: Path, clean: tuple[Path, Path]) -> None:
    src, out = clean
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  tile_size: 48\ndata:\n  patch_size: 48\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["prepare", "--src", str(src), "--out", str(out), "--params", str(params)])
    assert ok.exit_code == 0, ok.output
    assert "8 inputs" in ok.output and "0 rejected" in ok.output
    missing = runner.invoke(app, ["prepare", "--src", str(tmp_path / "nope"), "--params", str(params)])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert "Traceback" not in missing.output


def test_output_inside_the_source_is_refused(clean: tuple[Path, Path]) -> None:
    src, _ = clean
    with pytest.raises(ConfigError, match="inside the source"):
        prepare(src, src / "processed", _config())
