"""One skip policy for tests that need a tool, schema or service outside the Python environment.

Under CI (``CI=true``) a missing prerequisite is a failure: a green CI must mean every test ran.
Locally it is a skip whose reason names the command that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SYSTEM_DEPS = "bash scripts/install-system-deps.sh"
CONTAINER_TOOLS = "bash scripts/install-container-tools.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str, install: str) -> None:
    """Skip (locally) or fail (under CI): ``what`` is absent, ``install`` provides it."""
    message = f"{what} is not available: run `{install}`"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """A tool on PATH or in /usr/sbin (Debian puts daemons such as nginx there)."""
    found = shutil.which(name)
    if found:
        return found
    sbin = Path("/usr/sbin") / name
    return str(sbin) if sbin.is_file() and os.access(sbin, os.X_OK) else None


def require_tool(name: str, install: str = SYSTEM_DEPS) -> str:
    """The tool's path, or skip/fail by the policy above."""
    path = find_tool(name)
    if path is None:
        missing(name, install)
    assert path is not None
    return path


def needs_tool(name: str, install: str = SYSTEM_DEPS) -> pytest.MarkDecorator:
    """Mark a test, class or module (``pytestmark``) that runs ``name``: tests/conftest.py checks it by
    the policy above before any of the test's fixtures is set up."""
    return pytest.mark.needs_tool(name, install)


def require_path(path: Path, what: str, install: str) -> Path:
    """A file or folder the test reads (a schema, a dataset), or skip/fail by the policy above."""
    if not path.exists():
        missing(f"{what} ({path})", install)
    return path
