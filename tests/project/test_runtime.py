"""The allocator tuning every `hndsr` command applies (hndsr.runtime)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SNIPPET = """
import ctypes, json
from hndsr import runtime
first = runtime.tune_allocator()
print(json.dumps({"applied": first, "again": runtime.tune_allocator()}))
"""


def _run(env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop("HNDSR_MALLOC_TUNING", None)
    if env_value is not None:
        env["HNDSR_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_applied_once_on_glibc_and_idempotent() -> None:
    assert _run(None) == '{"applied": true, "again": true}'


def test_can_be_switched_off() -> None:
    assert _run("0") == '{"applied": false, "again": false}'


def test_the_cli_applies_it() -> None:
    from typer.testing import CliRunner

    from hndsr import runtime
    from hndsr_cli import app

    result = CliRunner().invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    assert runtime._applied is not None  # the callback ran tune_allocator()
