"""``hndsr pipeline compile|run|submit``: the Kubeflow training pipeline from the shell (issue #4).

A thin adapter over ``pipelines.runner``; kfp and mlflow are imported inside the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pipelines.runner import PipelineArguments

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

ParamsOpt = Annotated[Path, typer.Option(help="params.yaml, passed whole to the pipeline.")]
ProfileOpt = Annotated[
    str | None, typer.Option(help="Profile of params.yaml (default: its pipeline.profile; 'base' = none).")
]
DataOpt = Annotated[str, typer.Option("--data", help="Raw HR images: folder or s3://bucket/prefix.")]
EpochsOpt = Annotated[
    tuple[int, int, int],
    typer.Option(help="Epochs of the autoencoder, operator and diffusion stages (0 = the profile's)."),
]
ScalesOpt = Annotated[
    list[float] | None, typer.Option("--scale", help="Evaluation scale (repeat; 4 required).")
]
StepsOpt = Annotated[int, typer.Option(help="DDIM steps at evaluation (0 = deterministic path).")]
LpipsOpt = Annotated[bool, typer.Option(help="Score LPIPS (its weights are fetched once).")]
ToleranceOpt = Annotated[
    float | None,
    typer.Option(
        help="How much worse LPIPS (x4) a new champion may have (default: gate.max_lpips_regression)."
    ),
]
GainOpt = Annotated[
    float | None,
    typer.Option(
        help="Y-PSNR (x4) margin over the incumbent needed to promote (default: gate.min_psnr_gain_db)."
    ),
]
InitOpt = Annotated[
    str,
    typer.Option(
        help="Model training starts from: release, none (from scratch), a checkpoint directory, "
        "s3://bucket/prefix or models:/name@alias."
    ),
]
MlflowOpt = Annotated[
    str, typer.Option(help="MLflow tracking URI ('' = $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db).")
]
BackendOpt = Annotated[
    str, typer.Option(help="Training backend: in-process, or pytorchjob (a Kubeflow PyTorchJob per stage).")
]


# The commands' options that make the pipeline's arguments, with the defaults of an option a command lacks.
ARGUMENT_OPTIONS: dict[str, Any] = {
    "params": Path("params.yaml"),
    "profile": None,
    "data": "data/raw",
    "epochs": (0, 0, 0),
    "scale": None,
    "diffusion_steps": 0,
    "lpips": True,
    "lpips_tolerance": None,
    "min_gain_db": None,
    "init_from": "release",
    "mlflow_uri": "",
    "training_backend": "in-process",
}


def pipeline_arguments(options: dict[str, Any]) -> PipelineArguments:
    """The pipeline's arguments from a command's options (``locals()``: run and submit share them by
    name); params.yaml's profile and gate fill what the options leave open."""
    from hndsr.config import parse_params
    from pipelines.runner import PipelineArguments, default_profile, read_params

    o = ARGUMENT_OPTIONS | {k: v for k, v in options.items() if k in ARGUMENT_OPTIONS}
    text = read_params(o["params"])
    chosen = default_profile(text) if o["profile"] is None else o["profile"]
    chosen = "" if chosen == "base" else chosen
    params_text = read_params(o["params"], chosen)
    gate = parse_params(json.loads(params_text), profile=chosen or None).gate
    epochs = o["epochs"]
    return PipelineArguments(
        data_uri=o["data"],
        params=params_text,
        profile=chosen,
        autoencoder_epochs=epochs[0],
        operator_epochs=epochs[1],
        diffusion_epochs=epochs[2],
        scales=list(o["scale"] or [2.0, 3.0, 4.0]),
        diffusion_steps=o["diffusion_steps"],
        lpips=o["lpips"],
        lpips_tolerance=gate.max_lpips_regression if o["lpips_tolerance"] is None else o["lpips_tolerance"],
        min_gain_db=gate.min_psnr_gain_db if o["min_gain_db"] is None else o["min_gain_db"],
        init_from=o["init_from"],
        mlflow_uri=o["mlflow_uri"],
        training_backend=o["training_backend"],
    )


def register(app: typer.Typer, *, friendly_errors: Decorator) -> None:
    pipeline_app = typer.Typer(help="The Kubeflow training pipeline: compile, run locally, submit.")
    app.add_typer(pipeline_app, name="pipeline", no_args_is_help=True)

    @pipeline_app.command("compile")
    @friendly_errors
    def compile_cmd(
        out: Annotated[Path, typer.Option(help="Pipeline YAML to write.")] = Path(
            "build/hndsr-training.yaml"
        ),
        params: ParamsOpt = Path("params.yaml"),
        profile: ProfileOpt = None,
        data: DataOpt = "data/raw",
        training_backend: BackendOpt = "in-process",
    ) -> None:
        """Write the pipeline YAML (params.yaml and the profile become the parameters' defaults; with
        --training-backend pytorchjob the train steps mount the training volume)."""
        from pipelines.runner import compile_pipeline

        args = pipeline_arguments(locals())
        typer.echo(f"wrote {compile_pipeline(out, args)}")

    @pipeline_app.command("run")
    @friendly_errors
    def run_cmd(
        local: Annotated[
            bool, typer.Option("--local", help="Run here with kfp.local (required for now).")
        ] = False,
        params: ParamsOpt = Path("params.yaml"),
        profile: ProfileOpt = None,
        data: DataOpt = "data/raw",
        epochs: EpochsOpt = (0, 0, 0),
        scale: ScalesOpt = None,
        diffusion_steps: StepsOpt = 0,
        lpips: LpipsOpt = True,
        lpips_tolerance: ToleranceOpt = None,
        min_gain_db: GainOpt = None,
        init_from: InitOpt = "release",
        mlflow_uri: MlflowOpt = "",
        training_backend: BackendOpt = "in-process",
        pipeline_root: Annotated[Path, typer.Option(help="Local task outputs and cache.")] = Path(
            ".pipeline"
        ),
        cache: Annotated[bool, typer.Option(help="Reuse the outputs of unchanged tasks.")] = True,
        summary_json: Annotated[Path | None, typer.Option(help="Also write the summary here.")] = None,
        data_version: Annotated[
            str | None, typer.Option(help="Identity of the data for the cache (default: content digest).")
        ] = None,
        code_version: Annotated[
            str | None, typer.Option(help="Identity of the code for the cache (default: source digest).")
        ] = None,
    ) -> None:
        """Run the whole DAG offline (kfp.local SubprocessRunner) and print where everything is."""
        from components.training_steps import pin_initial_model
        from pipelines.runner import code_fingerprint, data_fingerprint, run_local

        if not local:
            raise typer.BadParameter("only --local runs exist here; use `hndsr pipeline submit --host URL`")
        args = pipeline_arguments(locals())
        args.data_version = data_fingerprint(data) if data_version is None else data_version
        args.code_version = code_fingerprint() if code_version is None else code_version
        # Checked here too, so a bad init_from is one line before any task starts; the pipeline's
        # first step checks it again where it runs (Kubeflow).
        pin_initial_model(args.init_from, params=args.params, profile=args.profile, tracking_uri=mlflow_uri)
        summary = run_local(args, pipeline_root=pipeline_root, cache=cache)
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        typer.echo(format_summary(summary))

    @pipeline_app.command("submit")
    @friendly_errors
    def submit_cmd(
        host: Annotated[str, typer.Option(help="Kubeflow Pipelines API, e.g. http://ml-pipeline-ui:80")],
        params: ParamsOpt = Path("params.yaml"),
        profile: ProfileOpt = None,
        data: DataOpt = "s3://hndsr/raw",
        epochs: EpochsOpt = (0, 0, 0),
        scale: ScalesOpt = None,
        diffusion_steps: StepsOpt = 0,
        lpips: LpipsOpt = True,
        lpips_tolerance: ToleranceOpt = None,
        min_gain_db: GainOpt = None,
        init_from: InitOpt = "release",
        mlflow_uri: MlflowOpt = "",
        training_backend: BackendOpt = "in-process",
        experiment: Annotated[str, typer.Option(help="KFP experiment.")] = "hndsr",
        run_name: Annotated[str, typer.Option(help="Run name (default: hndsr-<profile>).")] = "",
        cron: Annotated[
            str, typer.Option(help="Recurring run on this 6-field cron (e.g. '0 0 3 * * *'); '' = one run.")
        ] = "",
        data_version: Annotated[
            str, typer.Option(help="Identity of the data (e.g. a DVC rev), for caching.")
        ] = "",
    ) -> None:
        """Submit to a real Kubeflow Pipelines: one run, or a recurring run with --cron."""
        from pipelines.runner import submit

        args = pipeline_arguments(locals())
        args.data_version = data_version
        run_id = submit(host, args, experiment=experiment, run_name=run_name, cron=cron)
        typer.echo(f"{'recurring run' if cron else 'run'} {run_id} submitted to {host}")


def format_summary(summary: dict[str, Any]) -> str:
    x4 = summary["x4"]
    rows = [("bicubic", x4["bicubic"])]
    if x4.get("incumbent"):
        rows.append((f"incumbent v{x4.get('incumbent_version', '?')}", x4["incumbent"]))
    rows.append((f"challenger v{summary['version']}", x4["model"]))
    lines = [
        f"registered {summary['model']} version {summary['version']} as {summary['alias']}: "
        f"{summary['reason']}",
        f"champion: models:/{summary['model']}@champion = version {summary['champion_version'] or 'none'}"
        f" ({summary['tracking_uri']})",
        f"held-out x4, {x4['n_images']} images: {'PSNR-Y dB':>10} {'SSIM-Y':>8} {'LPIPS':>8}",
    ]
    for label, scores in rows:
        lines.append(
            f"  {label:<24} {scores['psnr_y']:>10.4f} {scores['ssim_y']:>8.4f} {scores['lpips']:>8.4f}"
        )
    links = summary.get("links") or {}
    lines += [
        f"HTML report:     {links.get('report') or summary['report']}",
        f"evaluation JSON: {links.get('evaluation') or summary.get('evaluation', '')}",
        f"model card:      {links.get('model_card') or summary['model_card']}",
    ]
    return "\n".join(lines)
