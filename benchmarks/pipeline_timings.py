"""Wall time of the main job's pipeline (what `make run` runs before serving): sample imagery, then
the Kubeflow training pipeline through kfp.local (quick profile), a first run and an unchanged second
run (served from the task cache), in a fresh working directory so that nothing is cached before.

Records each command's wall time, the pipeline's summary (held-out x4 metrics beside bicubic, the
registered version) and the machine (benchmarks/_results.py). Takes ~5 minutes on 2 quiet cores.

Usage: python benchmarks/pipeline_timings.py [--profile quick] [--keep DIR]
Raw result: benchmarks/results/pipeline_timings.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import Measurement

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    print("+", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return round(time.monotonic() - t0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="quick")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work here (kept) instead of a temporary folder"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/pipeline_timings.json"
    )
    args = parser.parse_args()
    measurement = Measurement()
    work = args.keep or Path(tempfile.mkdtemp(prefix="hndsr-pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hndsr = str(Path(sys.executable).parent / "hndsr")
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    run = [hndsr, "pipeline", "run", "--local", "--params", str(ROOT / "params.yaml"), "--data", "data/raw"]
    run += ["--profile", args.profile, "--summary-json", ".pipeline/summary.json"]
    try:
        seconds = {
            "data_sample": timed([hndsr, "data", "sample", "--out", "data/raw"], work, env),
        }
        n_images = len(list((work / "data" / "raw").rglob("*.png")))
        seconds["pipeline_first_run"] = timed(run, work, env)
        first = json.loads((work / ".pipeline" / "summary.json").read_text())
        seconds["pipeline_unchanged_second_run"] = timed(run, work, env)
        second = json.loads((work / ".pipeline" / "summary.json").read_text())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "profile": args.profile,
        "seconds": seconds,
        "first_run_summary": first,
        "second_run_version": second.get("version"),
        "sample_images": n_images,
    }
    print(json.dumps(result, indent=2))
    measurement.write("pipeline_timings", result, path=args.out)


if __name__ == "__main__":
    main()
