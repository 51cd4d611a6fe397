"""The one writer of benchmark results: every benchmark script saves its raw result here, as JSON under
benchmarks/results/, with the description of the machine and the moment it was measured on, so that
each figure in the README can be traced to a file (README "Figures and their results files").

    from _results import Measurement
    run = Measurement()                 # at the start: load average, time, command line
    ...                                 # measure
    run.write("speed_memory", result)   # benchmarks/results/speed_memory.json

The file holds ``{"benchmark", "machine", "run", "result"}``: ``machine`` is the CPU model, its logical
cores, the torch version and threads, Python, the OS; ``run`` the git commit (and whether the tree had
local changes), the command line, the UTC start and end and the load average at both (the machine may
be shared: a figure measured under load says so).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        "sha": git("rev-parse", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


class Measurement:
    """Started at the top of a benchmark's ``main``; :meth:`write` saves the result with its context."""

    def __init__(self) -> None:
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.loadavg_at_start = loadavg()
        self.t0 = time.monotonic()
        self.command = [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]

    def record(self, benchmark: str, result: Any) -> dict[str, Any]:
        return {
            "benchmark": benchmark,
            "machine": machine(),
            "run": {
                "git": git_commit(),
                "command": self.command,
                "started_utc": self.started,
                "ended_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                "wall_s": round(time.monotonic() - self.t0, 1),
                "loadavg_at_start": self.loadavg_at_start,
                "loadavg_at_end": loadavg(),
            },
            "result": result,
        }

    def write(self, name: str, result: Any, *, path: str | Path | None = None) -> Path:
        """``benchmarks/results/<name>.json`` (or ``path``); returns where it went."""
        target = Path(path) if path is not None else RESULTS / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.record(name, result), indent=2, default=str) + "\n")
        tmp.replace(target)
        print(f"raw result: {target}", flush=True)
        return target


def read_result(path: str | Path) -> Any:
    """The ``result`` of a file :meth:`Measurement.write` wrote (older files: the whole document)."""
    doc = json.loads(Path(path).read_text())
    return (
        doc["result"] if isinstance(doc, dict) and {"benchmark", "machine", "result"} <= doc.keys() else doc
    )
