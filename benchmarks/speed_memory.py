"""Speed and memory of the HNDSR engine on this machine (a benchmark, not a test).

Prints, for the given checkpoint (default: the release one):
- seconds per output megapixel, deterministic path and diffusion at the model's default steps;
- multiply-accumulates per output megapixel (torch's FLOP counter) and the achieved GFLOP/s against
  a measured fp32 matmul and conv peak on the same machine;
- peak resident memory of a fresh process upscaling a 512x512 input to 2048x2048 (x4), tiled;
- max |tiled - whole| on the deterministic path at the default tiling.

Usage: python benchmarks/speed_memory.py [--checkpoint DIR] [--threads N] [--diffusion-steps N]
Raw result: benchmarks/results/speed_memory.json; with HNDSR_MALLOC_TUNING=0 (glibc's allocator
defaults, the README's allocator comparison) speed_memory_glibc_defaults.json; with HNDSR_CPU_BF16=0
(fp32 throughout) speed_memory_fp32.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _results import Measurement
from torch.utils.flop_counter import FlopCounterMode


def _load(checkpoint: str | None):
    from hndsr.checkpoint import load_checkpoint, load_release_checkpoint

    return (load_checkpoint(checkpoint) if checkpoint else load_release_checkpoint())[0]


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measured_peaks() -> dict[str, float]:
    a = torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / _time(lambda: a @ a, 3) / 1e9
    x = torch.randn(1, 64, 256, 256)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    with torch.no_grad():
        conv_gflops = 2 * 64 * 64 * 9 * 256 * 256 / _time(lambda: conv(x), 3) / 1e9
    return {"matmul_fp32_gflops": matmul, "conv3x3_fp32_gflops": conv_gflops}


def macs_per_output_mp(model, steps: int, strength: float = 1.0) -> float:
    from hndsr.models.operator import LRInput

    lr = LRInput.whole(torch.rand(1, 3, 128, 128), (512, 512))
    up = lr.upsample(lr.lr)
    scale = torch.tensor([4.0])
    noise = torch.randn(1, model.latent_channels, 128, 128)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.render(
            up,
            scale,
            steps=steps,
            strength=strength,
            initial_noise=noise if steps else None,
            lr=lr if model.needs_lr else None,
        )
    return counter.get_total_flops() / 2 / (512 * 512 / 1e6)


def peak_memory_child(checkpoint: str | None, threads: int, steps: int) -> None:
    torch.set_num_threads(threads)
    from hndsr.inference import Upscaler

    model = _load(checkpoint)
    lr = torch.rand(3, 512, 512)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    upscaler = Upscaler(model)
    upscaler.upscale(lr[:, :64, :64], scale=4.0, steps=steps)  # warm-up: first-call kernel selection
    started = time.perf_counter()
    out = upscaler.upscale(lr, scale=4.0, steps=steps)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_rss_mib": after / 1024,
                "rss_before_mib": before / 1024,
                "shape": list(out.shape),
                "seconds_per_output_mp": seconds / (out.shape[1] * out.shape[2] / 1e6),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--diffusion-steps", type=int, default=None, help="default: the model's, or 10 if 0")
    parser.add_argument("--strength", type=float, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/speed_memory.json (speed_memory_glibc_defaults.json when "
        "HNDSR_MALLOC_TUNING=0, _fp32 with HNDSR_CPU_BF16=0)",
    )
    args = parser.parse_args()
    from hndsr.runtime import tune_allocator

    tune_allocator()  # what every `hndsr` command does (HNDSR_MALLOC_TUNING=0 measures glibc's defaults)
    if args.memory_child:
        peak_memory_child(args.checkpoint, args.threads, args.steps)
        return
    measurement = Measurement()
    torch.set_num_threads(args.threads)
    from hndsr.evaluation import tiling_discrepancy
    from hndsr.inference import Upscaler

    model = _load(args.checkpoint)
    diffusion_steps = args.diffusion_steps or model.default_steps or 10
    strength = args.strength if args.strength is not None else model.default_strength
    upscaler = Upscaler(model)
    results: dict[str, object] = {"threads": args.threads, "torch": torch.__version__}
    lr = torch.rand(3, 256, 256)  # -> 1024 x 1024 = 1.05 MP at x4
    mp = 1024 * 1024 / 1e6
    det = _time(lambda: upscaler.upscale(lr, scale=4.0, steps=0), 3) / mp
    diff = (
        _time(lambda: upscaler.upscale(lr, scale=4.0, steps=diffusion_steps, strength=strength, seed=0), 2)
        / mp
    )
    label = f"diffusion_{diffusion_steps}_steps_strength_{strength:g}"
    results["seconds_per_output_mp"] = {"deterministic": det, label: diff}
    macs_det = macs_per_output_mp(model, 0)
    macs_diff = macs_per_output_mp(model, diffusion_steps, strength)
    peaks = measured_peaks()
    results["gmacs_per_output_mp"] = {"deterministic": macs_det / 1e9, "diffusion": macs_diff / 1e9}
    results["achieved_gflops"] = {
        "deterministic": 2 * macs_det / 1e9 / det,
        "diffusion": 2 * macs_diff / 1e9 / diff,
    }
    results["measured_peak_gflops"] = peaks
    torch.manual_seed(0)
    lr2 = torch.rand(3, 200, 300)
    results["max_abs_tiled_minus_whole"] = tiling_discrepancy(upscaler, lr2, scale=4.0)
    for name, steps in (("deterministic", 0), ("diffusion", diffusion_steps)):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                "--threads",
                str(args.threads),
                "--steps",
                str(steps),
            ]
            + (["--checkpoint", args.checkpoint] if args.checkpoint else []),
            capture_output=True,
            text=True,
            check=True,
        )
        results[f"x4_512_to_2048_{name}"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))
    tuning = os.environ.get("HNDSR_MALLOC_TUNING", "1") != "0"
    bf16 = os.environ.get("HNDSR_CPU_BF16", "1") != "0"
    results["allocator_tuning"], results["cpu_bf16_allowed"] = tuning, bf16
    name = "speed_memory" + ("" if tuning else "_glibc_defaults") + ("" if bf16 else "_fp32")
    measurement.write(name, results, path=args.out)


if __name__ == "__main__":
    main()
