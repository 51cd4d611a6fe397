"""Real images on a real runtime: podman (runc, cgroupfs, host network, docker/containers.conf), run as
the manifests run them: uid 10001, read-only root filesystem, tmpfs /tmp.

The images are built (or found up to date in the layer cache) once per session by the project command,
``bash scripts/build-images.sh`` (``make images``), so the tests run the tree they sit in.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from servingstack import ReadyProcess, free_port
from tooling import CONTAINER_TOOLS, missing, require_tool

from deploy.image_tags import IMAGE_KINDS, image_ref

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
STARTUP_TIMEOUT_S = 180.0
USER = "10001:10001"


def podman_env() -> dict[str, str]:
    return os.environ | {"CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman_base() -> list[str]:
    """``podman`` with the runtime settings this kind of machine needs (crun refuses its cgroups)."""
    exe = require_tool("podman", CONTAINER_TOOLS)
    require_tool("runc", CONTAINER_TOOLS)
    return [exe, "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def run_args(*, name: str | None = None, mounts: Sequence[tuple[Path | str, str, str]] = ()) -> list[str]:
    """``podman run`` options: as the manifests' securityContext (uid 10001, read-only root, tmpfs /tmp)."""
    args = ["run", "--rm", "--network", "host", "--user", USER, "--read-only", "--tmpfs", "/tmp:rw,mode=1777"]
    args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if name:
        args += ["--name", name]
    for source, target, mode in mounts:
        args += ["-v", f"{source}:{target}:{mode}"]
    return args


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*podman_base(), *args], env=podman_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])}... exited {proc.returncode}: {proc.stderr[-3000:]}"
        )
    return proc


def build_images() -> dict[str, str]:
    """Every image, built by the project command (a no-op in the layer cache when nothing changed)."""
    podman_base()
    refs = {kind: image_ref(kind) for kind in IMAGE_KINDS}
    if os.environ.get("HNDSR_IMAGES_BUILT") == "1":  # built just before (images.yml): use them as they are
        return _existing(refs)
    require_tool("buildah", CONTAINER_TOOLS)
    proc = subprocess.run(
        ["bash", "scripts/build-images.sh", *IMAGE_KINDS], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        if proc.returncode == 2:  # a missing base image, torch wheel or tool: the line says what to run
            missing(f"the images ({lines[-1].removeprefix('error: ')})", "make images")
        raise AssertionError(f"`make images` failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return _existing(refs)


def _existing(refs: dict[str, str]) -> dict[str, str]:
    for ref in refs.values():
        if podman("image", "exists", ref, check=False).returncode != 0:
            missing(f"the image {ref}", "make images")
    return refs


@dataclass
class Container(ReadyProcess):
    """A long-running container (a server), stopped and removed by ``stop``."""

    image: str
    command: list[str]
    log: Path
    mounts: list[tuple[Path | str, str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"hndsr-test-{uuid.uuid4().hex[:10]}")
    proc: subprocess.Popen[bytes] | None = None
    startup_timeout_s: ClassVar[float] = STARTUP_TIMEOUT_S

    def start(self, ready_path: str = "/v2/health/live", accept: tuple[int, ...] = (200,)) -> Container:
        env_args = [a for k, v in self.env.items() for a in ("-e", f"{k}={v}")]
        run = run_args(name=self.name, mounts=self.mounts)
        cmd = [*podman_base(), *run, *env_args, self.image, *self.command]
        self.launch(cmd, f"container {self.command[:2]}", ready_path, accept, 0.5, env=podman_env())
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        podman("stop", "--time", "10", self.name, check=False, timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            podman("rm", "--force", self.name, check=False, timeout=60)
            proc.wait()
