"""The one skip policy (tests/tooling.py) and the set-up scripts `make test` runs first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tooling import find_tool, missing, require_path, require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_missing_skips_locally_naming_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no-such-tool is not available: run `apt-get x`"):
        missing("no-such-tool", "apt-get x")


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_missing_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(
        pytest.fail.Exception,
        match="CI=true and no-such-tool-hndsr is not available: run `bash scripts/install",
    ):
        require_tool("no-such-tool-hndsr")


def test_require_path_and_find_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    assert require_path(tmp_path, "a folder", "mkdir") == tmp_path
    with pytest.raises(pytest.skip.Exception, match="schema"):
        require_path(tmp_path / "absent", "schema", "fetch it")
    assert find_tool("sh") == shutil.which("sh")
    assert find_tool("no-such-tool-hndsr") is None


def test_install_script_without_root_or_sudo_stops_with_the_command_to_run(tmp_path: Path) -> None:
    """Not root, no sudo, tools missing: one line on stderr, exit 1, nothing attempted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    for tool in ("sort", "tr"):  # what the script runs besides bash builtins
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    bash = shutil.which("bash") or "/bin/bash"
    run = subprocess.run(
        [bash, str(ROOT / "scripts" / "install-system-deps.sh")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: system packages missing (") and "redis-server" in line
    assert line.endswith("run `sudo bash scripts/install-system-deps.sh`")


def test_install_script_is_a_no_op_when_everything_is_there() -> None:
    if not all(find_tool(t) for t in ("redis-server", "promtool", "amtool", "nginx", "kubectl", "openssl")):
        missing("the system packages", "bash scripts/install-system-deps.sh")
    env = os.environ | {"PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-system-deps.sh")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout == run.stderr == ""
