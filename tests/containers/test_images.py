"""Every image starts as the manifests run it: uid 10001, read-only root filesystem, tmpfs /tmp."""

from __future__ import annotations

import pytest
from podmanstack import podman, run_args

from deploy.image_tags import IMAGE_KINDS
from hndsr import __version__

# The first test may build the images (`make images`: minutes when the layer cache is cold).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_runs_as_10001_read_only_and_reports_its_version(kind: str, images: dict[str, str]) -> None:
    ref = images[kind]
    assert podman(*run_args(), ref, "--version").stdout.strip() == __version__
    # The image's own user (no --user): the Dockerfile's USER, not root.
    config = podman("image", "inspect", "--format", "{{.Config.User}}", ref).stdout.strip()
    assert config == "10001:10001"
    probe = (
        "import os, pathlib; print(os.getuid(), os.getgid());"
        "pathlib.Path('/tmp/ok').write_text('x');"
        "\ntry:\n open('/opt/hndsr/x', 'w')\nexcept OSError as e:\n print('ro', e.errno)"
    )
    out = podman(*run_args(), "--entrypoint", "python3", ref, "-c", probe).stdout.split()
    assert out == ["10001", "10001", "ro", "30"]  # EROFS: the root filesystem is read-only
    assert "hndsr" in podman(*run_args(), ref, "--help").stdout
