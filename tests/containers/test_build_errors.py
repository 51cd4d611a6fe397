"""A build that lacks its local base image or its torch wheel stops at once with one line that says what
to run (scripts/build-images.sh, as `make images` runs it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from podmanstack import ROOT
from tooling import CONTAINER_TOOLS, require_tool


def build(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    require_tool("buildah", CONTAINER_TOOLS)
    return subprocess.run(
        ["bash", "scripts/build-images.sh", "serve"],
        cwd=ROOT, env=os.environ | env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BASE_IMAGE": "localhost/hndsr-no-such-base:bookworm"}, "run `bash scripts/make-base-image.sh`"),
        ({"TORCH_WHEELS": "/nonexistent-wheels"}, "set TORCH_WHEELS=DIR holding it"),
        ({"IMAGE_PROFILE": "nope"}, "IMAGE_PROFILE must be local or production"),
    ],
)
def test_missing_base_or_wheel_is_one_line_saying_what_to_run(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    proc = build(tmp_path, **env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert proc.stdout == ""
