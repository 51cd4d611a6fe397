"""What can be checked of the Dockerfiles without a Docker engine: pinned bases, multi-stage, a non-root
USER in the final stage, an entry point that is the package's console script with a real subcommand,
and a build context that holds every package the image installs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer

from deploy.image_tags import IMAGE_KINDS
from hndsr_cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# An exact version in the tag (python:3.11.11-slim-bookworm, nvidia/cuda:12.8.1-...) or a digest.
PINNED = re.compile(r"^[\w.\-/]+(:[\w.\-]*\d+\.\d+\.\d+[\w.\-]*)?(@sha256:[0-9a-f]{64})?$")


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(ops) if op == "FROM"]
    return ops[starts[-1] :]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_dockerfile_is_pinned_multistage_and_non_root(kind: str) -> None:
    ops = instructions(DOCKER / f"{kind}.Dockerfile")
    # Build args before the first FROM (BASE_IMAGE: the local base here) default to the production base.
    args = dict(rest.split("=", 1) for op, rest in ops[: [o for o, _ in ops].index("FROM")] if op == "ARG")
    froms = [rest.split() for op, rest in ops if op == "FROM"]
    stages = {f[2] for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f[0]) for f in froms]
    assert len(bases) >= 2, f"{kind}: not multi-stage"
    for base in (b for b in bases if b not in stages):
        assert PINNED.match(base) and (":" in base or "@" in base), f"{kind}: base {base} is not pinned"
        assert "latest" not in base
    users = [rest for op, rest in final_stage(ops) if op == "USER"]
    assert users, f"{kind}: the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{kind}: runs as root"
    # The installed environment is copied in; compilers and pip caches stay in the build stage.
    assert any(op == "COPY" and rest.startswith("--from=") for op, rest in final_stage(ops))


def _resolve(command_path: list[str]) -> Any:
    """The click command of ``hndsr <command_path>`` (typer builds it on its own click)."""
    command: Any = typer.main.get_command(app)
    for name in command_path:
        sub = getattr(command, "commands", {}).get(name)
        assert sub is not None, f"hndsr has no command {' '.join(command_path)}"
        command = sub
    return command


# What each image runs when nothing overrides it (KFP and torchrun set their own command).
DEFAULT_COMMANDS = {"serve": ["serve", "predictor"], "worker": ["serve", "worker"], "train": []}


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_entry_point_is_the_console_script_with_a_real_subcommand(kind: str) -> None:
    ops = final_stage(instructions(DOCKER / f"{kind}.Dockerfile"))
    entrypoint = json.loads([rest for op, rest in ops if op == "ENTRYPOINT"][-1])
    cmd = json.loads([rest for op, rest in ops if op == "CMD"][-1])
    assert entrypoint == ["hndsr"] and "hndsr" in PYPROJECT["project"]["scripts"]
    path = [a for a in cmd if not a.startswith("-")]
    assert path[:2] == DEFAULT_COMMANDS[kind]
    _resolve(path[:2])


def test_serving_image_defaults_to_the_model_kserve_mounts() -> None:
    ops = final_stage(instructions(DOCKER / "serve.Dockerfile"))
    cmd = json.loads([rest for op, rest in ops if op == "CMD"][-1])
    command = _resolve(cmd[:2])
    command.make_context("predictor", cmd[2:])  # the options parse
    assert cmd[cmd.index("--storage-uri") + 1] == "/mnt/models"


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_build_context_holds_every_installed_package(kind: str) -> None:
    ops = instructions(DOCKER / f"{kind}.Dockerfile")
    copied = {rest.split()[0] for op, rest in ops if op == "COPY" and not rest.startswith("--from")}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    missing = {p for p in packages if (ROOT / p).is_dir() and p not in copied}
    assert not missing, f"{kind}: COPY these packages too: {sorted(missing)}"
    ignore = (DOCKER / f"{kind}.Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][0] == "*", "the context is an allowlist"
    for package in packages & copied:
        assert f"!{package}/" in ignore, f"{kind}: {package}/ is copied but not in the build context"
