"""The `hndsr` entry point composes every adapter's commands without importing their libraries: `hndsr
--help` stays fast and a server process holds only what it uses."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "pandas", "kserve", "kfp", "mlflow", "great_expectations", "evidently", "redis", "minio")


def test_the_entry_point_imports_no_heavy_library() -> None:
    code = f"import sys, hndsr_cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing hndsr_cli imported: {result.stdout.strip()}"
