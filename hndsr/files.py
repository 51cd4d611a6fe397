"""Helpers over files that several modules need: a content hash, and the per-user cache folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_DIR_ENV = "HNDSR_CACHE_DIR"


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints are tens of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """``$HNDSR_CACHE_DIR`` or ``~/.cache/hndsr``: downloads kept between runs (LPIPS weights, s3 mirrors)."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hndsr"
