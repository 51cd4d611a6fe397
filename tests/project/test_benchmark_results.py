"""Every figure has its raw result: the shared writer (benchmarks/_results.py) records the machine and
the run beside the result, every benchmark script writes through it, and every results file the
README's figures table names (not marked pending) is in benchmarks/results."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# Not measurements: the release report writes the shipped checkpoint's card and evaluation.json.
NOT_BENCHMARKS = {"_results.py", "release_report.py"}


def _results_module():
    spec = importlib.util.spec_from_file_location("_results", BENCHMARKS / "_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_results"] = module
    spec.loader.exec_module(module)
    return module


def test_writer_records_machine_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = _results_module()
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--size", "2"])
    measurement = results.Measurement()
    path = measurement.write("x", {"seconds": 1.5}, path=tmp_path / "x.json")
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "x" and doc["result"] == {"seconds": 1.5}
    machine, run = doc["machine"], doc["run"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1 and machine["torch"]
    assert run["command"] == ["benchmarks/x.py", "--size", "2"]
    assert len(run["git"]["sha"]) == 40 and isinstance(run["git"]["dirty"], bool)
    assert len(run["loadavg_at_start"]) == 3 and run["started_utc"] <= run["ended_utc"]
    assert results.read_result(path) == {"seconds": 1.5}
    legacy = tmp_path / "old.json"
    legacy.write_text('{"threads": 2}')
    assert results.read_result(legacy) == {"threads": 2}  # files written before the writer


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in NOT_BENCHMARKS)
)
def test_every_benchmark_writes_through_the_shared_writer(script: str) -> None:
    text = (BENCHMARKS / script).read_text()
    assert re.search(r"^from _results import .*Measurement", text, re.M), (
        f"{script}: use benchmarks/_results.py"
    )
    assert ".write(" in text, f"{script} never writes its result"


def test_readme_figures_table_names_existing_results() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Figures and their results files", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    named = 0
    for row in rows:
        cell = row.rstrip(" |").split(" | ")[-1]
        files = re.findall(r"`([\w./<>-]+\.json)`", cell)
        assert files, f"no results file in: {row}"
        if "pending" in cell:
            continue
        for name in files:  # a bare name is beside the first one named with its folder
            path = ROOT / name if "/" in name else BENCHMARKS / "results" / name
            assert path.is_file(), f"{row}: {path} is not there"
            named += 1
    assert named >= 4
