"""Streamed GeoTIFF output vs the in-memory path: time and peak memory (a benchmark, not a test).

Writes a ``--size`` x ``--size`` RGB GeoTIFF (a mosaic of the NAIP scenes in ../shared/data/naip when
present, else a generated texture, with a UTM georeference), then runs ``hndsr sr``'s two ways of
producing a x``--scale`` GeoTIFF on the deterministic path with the release checkpoint, each in a fresh
process so that its peak resident memory (VmHWM) is its own:

- ``stream``: :func:`hndsr.streaming.upscale_raster_to_geotiff` (what ``hndsr sr`` does for .tif);
- ``memory``: :func:`hndsr.inference.upscale_raster` + :func:`hndsr.image_write.write_image` (the
  in-memory path: the whole float32 canvas).
- ``stream-plain``: ``stream`` with ``cog=False`` (``hndsr sr --no-cog``: no overviews, no COG step);
- ``cog``: only the COG step (:func:`hndsr.cog.to_cog`) on ``stream-plain``'s file, without the model.

``stream`` and ``memory`` write Cloud-Optimized GeoTIFFs (the default): the cost of the overviews is
``stream`` vs ``stream-plain`` (``python benchmarks/streaming_memory.py --size 1024 --modes stream
stream-plain cog --out benchmarks/results/cog_cost.json``).

It prints seconds, output MP/min, VmHWM and VmHWM after loading the model and the input (the part
that does not depend on the output path), and checks that both files hold the same pixels. Run it
once: it is CPU-heavy (2048 -> 8192 is ~2 min per mode on 2 cores).

Usage: python benchmarks/streaming_memory.py [--size 2048 [4096 ...]] [--memory-max-mp 150]
       [--scale 4] [--modes stream memory] [--threads 2] [--tile 1024]

``--memory-max-mp``: the in-memory mode is skipped for larger outputs (~50 bytes per output pixel).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import Measurement

ROOT = Path(__file__).resolve().parents[1]
MODES = ["stream", "memory", "stream-plain", "cog"]
sys.path.insert(0, str(ROOT / "benchmarks"))


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def write_input(path: Path, size: int) -> None:
    from async_throughput import input_png
    from PIL import Image

    from hndsr.image_write import write_image
    from hndsr.raster import GeoInfo, Raster

    rgb = np.asarray(Image.open(io.BytesIO(input_png(size))).convert("RGB"))
    data = np.moveaxis(rgb, -1, 0).astype(np.float32) / 255.0
    geo = GeoInfo(crs="EPSG:32614", transform=(1.0, 0.0, 500000.0, 0.0, -1.0, 5300000.0), nodata=None)
    write_image(path, Raster(data=data, dtype="uint8", profile=geo))


def child(mode: str, src: Path, dst: Path, scale: float, tile: int, threads: int) -> dict[str, float]:
    if mode == "cog":
        return cog_child(src, dst)
    import torch

    from hndsr.checkpoint import load_release_checkpoint
    from hndsr.image_read import read_image
    from hndsr.image_write import write_image
    from hndsr.inference import Upscaler, upscale_raster
    from hndsr.streaming import upscale_raster_to_geotiff

    torch.set_num_threads(threads)
    model, _ = load_release_checkpoint()
    raster = read_image(src)
    upscaler = Upscaler(model, device="cpu", tile=tile)
    base = vm_hwm()
    t0 = time.perf_counter()
    if mode.startswith("stream"):
        cog = mode == "stream"
        out_h, out_w = upscale_raster_to_geotiff(upscaler, raster, dst, scale=scale, steps=0, cog=cog)
    else:
        result = upscale_raster(upscaler, raster, scale=scale, steps=0)
        write_image(dst, result)
        out_h, out_w = result.height, result.width
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "out_mp": out_h * out_w / 1e6, "vm_hwm": vm_hwm(), "vm_hwm_base": base}


def cog_child(src: Path, dst: Path) -> dict[str, float]:
    import rasterio

    from hndsr.cog import to_cog

    with rasterio.open(src) as ds:
        out_mp = ds.width * ds.height / 1e6
    base = vm_hwm()
    t0 = time.perf_counter()
    to_cog(src, dst, in_memory=False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "out_mp": out_mp, "vm_hwm": vm_hwm(), "vm_hwm_base": base}


def same_pixels(a: Path, b: Path) -> bool:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.count, x.height, x.width) != (y.count, y.height, y.width) or x.transform != y.transform:
            return False
        for row in range(0, x.height, 1024):
            w = Window(0, row, x.width, min(1024, x.height - row))
            if not np.array_equal(x.read(window=w), y.read(window=w)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048])
    parser.add_argument("--memory-max-mp", type=float, default=150.0, help="skip the in-memory mode above")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--modes", nargs="+", default=["stream", "memory"], choices=MODES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/streaming_memory.json"
    )
    args = parser.parse_args()
    if args.child:
        mode, src, dst = args.child
        print(json.dumps(child(mode, Path(src), Path(dst), args.scale, args.tile, args.threads)))
        return
    measurement = Measurement()
    rows = [bench(size, args) for size in args.size]
    setup = {"scale": args.scale, "tile": args.tile, "threads": args.threads, "path": "deterministic"}
    measurement.write("streaming_memory", {"setup": setup, "sizes": rows}, path=args.out)


def bench(size: int, args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {"input_px": size, "modes": {}}
    out_mp = round(size * args.scale) ** 2 / 1e6
    modes = [m for m in args.modes if m != "memory" or out_mp <= args.memory_max_mp]
    if modes != args.modes:
        limit = f"--memory-max-mp {args.memory_max_mp:g}"
        print(f"{size}: {out_mp:.1f} MP of output is over {limit}: memory mode skipped")
    with tempfile.TemporaryDirectory(prefix="hndsr-stream-bench-") as tmp:
        src = Path(tmp) / "input.tif"
        write_input(src, size)
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(
            f"input {size}x{size} RGB GeoTIFF, x{args.scale:g}, deterministic path, release "
            f"checkpoint, tile {args.tile}, {args.threads} torch threads; load average {' '.join(load)}"
        )
        outputs = {}
        for mode in modes:
            dst = Path(tmp) / f"{mode}.tif"
            source = outputs.get("stream-plain", src) if mode == "cog" else src
            if mode == "cog" and source == src:
                print("cog: needs stream-plain first (--modes stream-plain cog)")
                continue
            cmd = [sys.executable, __file__, "--child", mode, str(source), str(dst)]
            cmd += ["--scale", str(args.scale), "--tile", str(args.tile), "--threads", str(args.threads)]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(f"{mode}: failed (exit {run.returncode})\n{run.stderr[-2000:]}")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            result["modes"][mode] = r | {"file_bytes": dst.stat().st_size}  # type: ignore[index]
            outputs[mode] = dst
            print(
                f"{mode:>6}: {r['seconds']:7.1f} s  {r['out_mp'] / (r['seconds'] / 60):6.1f} output MP/min  "
                f"peak RSS (VmHWM) {r['vm_hwm'] / 1e9:5.2f} GB (model + input loaded: "
                f"{r['vm_hwm_base'] / 1e9:4.2f} GB; {r['out_mp']:.1f} MP out, "
                f"+{(r['vm_hwm'] - r['vm_hwm_base']) / 1e9:.2f} GB to render and write "
                f"{(r['vm_hwm'] - r['vm_hwm_base']) / (r['out_mp'] * 1e6):.1f} B per output px), "
                f"{dst.stat().st_size / 1e6:.1f} MB file"
            )
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"load average after: {' '.join(load)}")
        if len(outputs) >= 2:
            first, *rest = outputs.values()
            result["identical"] = all(same_pixels(first, other) for other in rest)
            print(f"identical pixels and georeferencing: {result['identical']}")
        from hndsr.cog import is_cog

        result["valid_cog"] = {mode: is_cog(path) for mode, path in outputs.items()}
        print(f"valid COG (rio-cogeo): {result['valid_cog']}")
    return result


if __name__ == "__main__":
    main()
