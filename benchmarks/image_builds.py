"""Build times and sizes of the three images (a benchmark, not a test), written raw to
benchmarks/results/image_builds.json.

The builds run on a copy of the working tree (git's tracked + untracked-not-ignored files), with
scripts/build-images.sh exactly as `make images` runs it:
- cold: NO_CACHE=1, every layer of train, serve and worker rebuilt (the local base image given:
  scripts/make-base-image.sh, timed apart); torch from the local wheel, the other dependencies
  downloaded from PyPI;
- unchanged: the same tree again (layer cache);
- code change: one comment line appended to hndsr/cli.py (only the code layers rebuild).

Usage: python benchmarks/image_builds.py [--skip-cold] [--out benchmarks/results/image_builds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _results import Measurement, read_result

ROOT = Path(__file__).resolve().parents[1]


def copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def build(tree: Path, **env: str) -> dict[str, object]:
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", "scripts/build-images.sh"], cwd=tree, env=os.environ | env, capture_output=True, text=True
    )
    total = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    images = {}
    for line in proc.stdout.splitlines():  # kind, ref, "12.3 s", "123 bytes"
        kind, ref, seconds, size = line.split("\t")
        images[kind] = {"ref": ref, "seconds": float(seconds.split()[0]), "bytes": int(size.split()[0])}
    return {"total_seconds": round(total, 1), "images": images}


def tool_version(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true", help="only the warm builds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "image_builds.json")
    args = parser.parse_args()

    measurement = Measurement()
    started = time.monotonic()
    subprocess.run(["bash", "scripts/make-base-image.sh"], cwd=ROOT, check=True)
    result: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "buildah": tool_version("buildah", "--version"),
            "note": "cold builds download the dependencies from PyPI (torch from the local wheel)",
        },
        "base_image_seconds_if_present": round(time.monotonic() - started, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="hndsr-image-builds-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.skip_cold:
            result["cold"] = build(tree, NO_CACHE="1")
            print("cold:", json.dumps(result["cold"]), flush=True)
        result["unchanged"] = build(tree)
        print("unchanged:", json.dumps(result["unchanged"]), flush=True)
        with open(tree / "hndsr" / "cli.py", "a") as f:
            f.write("# benchmarks/image_builds.py: a code-only change\n")
        result["code_change"] = build(tree)
        print("code change:", json.dumps(result["code_change"]))
    if args.skip_cold and args.out.is_file():  # keep the cold figures of an earlier full run
        earlier = read_result(args.out)
        result = {k: v for k, v in earlier.items() if k.startswith("cold")} | result
    measurement.write("image_builds", result, path=args.out)


if __name__ == "__main__":
    main()
