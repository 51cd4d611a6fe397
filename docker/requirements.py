"""Print the requirements of the image's dependency layer from pyproject.toml alone.

``python3 docker/requirements.py serve`` -> build requirements, the core dependencies and the
``serve`` extra, one per line, torch left out (installed in the layer before from TORCH_SPEC).
The layer depends on pyproject.toml only, so a code change never reinstalls the dependencies.
Standard library only: it runs in the image before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    meta = tomllib.loads(pyproject.read_text())
    project = meta["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"error: unknown extra(s) {', '.join(unknown)}: use {', '.join(optional)}")
    reqs = list(meta.get("build-system", {}).get("requires", [])) + list(project["dependencies"])
    for extra in extras:
        reqs += optional[extra]
    out: list[str] = []
    for req in reqs:
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()
        if name != "torch" and req not in out:
            out.append(req)
    return out


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(requirements(root / "pyproject.toml", sys.argv[1:])))
