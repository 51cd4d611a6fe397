"""The work of each pipeline step: one call into ``hndsr`` plus its MLflow run.

Every function takes plain values and paths (no kfp types), so a KFP component is a one-line call and
the steps run the same from a test, a notebook or a container. ``params`` is the parsed params.yaml
tree (profiles included); ``profile`` picks one of its profiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import yaml

from components import tracking
from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_checkpoint_config
from hndsr.config import Params, parse_params
from hndsr.data import list_images
from hndsr.errors import HNDSRError, InputError
from hndsr.files import sha256_file

logger = logging.getLogger(__name__)

# The names the artifacts' copies carry (see named_file).
VALIDATION_FILE, EVALUATION_FILE, REPORT_FILE, MODEL_CARD_FILE = (
    "validation.json",
    "evaluation.json",
    "report.html",
    "model_card.md",
)
STAGES = ("autoencoder", "operator", "diffusion")
# in-process: this step trains (one GPU); pytorchjob: a Kubeflow PyTorchJob trains under torchrun on
# N workers (components/pytorchjob.py; needs the shared training volume mounted in this step's pod).
TRAINING_BACKENDS = ("in-process", "pytorchjob")


class StepFailed(HNDSRError):
    """A step ran and its result is unacceptable (e.g. data validation failed)."""


def load(params: str, profile: str = "", overrides: dict[str, Any] | None = None) -> Params:
    """``params``: params.yaml as YAML or JSON text. Text, not a dict: KFP would turn its ints into floats."""
    return parse_params(yaml.safe_load(params) or {}, profile=profile or None, overrides=overrides)


def named_file(artifact_path: str | Path, filename: str) -> Path:
    """Where an artifact's copy under its real name (``report.html``, ``model_card.md``...) goes: beside
    the artifact (KFP names the artifact's own file after the output, without an extension), so a
    browser, an editor and MLflow open it as what it is."""
    return Path(artifact_path).with_name(filename)


def named_uri(artifact_uri: str, filename: str) -> str:
    """:func:`named_file` for an artifact URI: a local path, or a remote URI whose scheme is kept."""
    if "://" in artifact_uri:  # Kubeflow on a cluster: minio://, s3://, gs://
        return artifact_uri.rsplit("/", 1)[0] + "/" + filename
    return str(named_file(artifact_uri, filename))


def write_named(artifact_path: str | Path, filename: str, text: str) -> Path:
    """Write ``text`` to the artifact's own file and to its named copy; returns the copy."""
    Path(artifact_path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact_path).write_text(text)
    named = named_file(artifact_path, filename)
    named.write_text(text)
    return named


def file_uri(path: str | Path) -> str:
    """``file:///abs/path`` for a local path; a remote URI (s3://, gs://, minio://) unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- prepare


def prepare_data(
    data_uri: str,
    out_dir: str,
    *,
    params: str,
    profile: str,
    tracking_uri: str,
    data_version: str = "",
    code_version: str = "",
) -> dict[str, Any]:
    """Raw HR images (folder or s3://bucket/prefix) -> tiles, LR pairs and catalog.parquet in ``out_dir``."""
    from hndsr.prepare import PrepareConfig, prepare
    from lake.storage import S3Settings, download_prefix, is_s3_uri

    p = load(params, profile)
    source, prefix = data_uri, ""
    with tracking.step_run(
        tracking_uri, "prepare", params={"data_uri": data_uri, "prepare": p.prepare.__dict__}
    ):
        mlflow.set_tags({"hndsr.data_version": data_version, "hndsr.code_version": code_version})
        if is_s3_uri(data_uri):
            local = Path(tempfile.mkdtemp(prefix="hndsr-raw-"))
            download_prefix(S3Settings.from_env(), data_uri, local)
            source, prefix = str(local), data_uri.rstrip("/") + "/"
        result = prepare(source, out_dir, PrepareConfig.from_params(p), source_prefix=prefix)
        s = result.summary
        mlflow.log_metrics(
            {f"{split}_tiles": float(v["tiles"]) for split, v in s["splits"].items()}
            | {"inputs": float(s["inputs"]), "rejected": float(s["rejected"])}
        )
        mlflow.log_dict(s, "prepare_summary.json")
    return {
        "tiles": {split: v["tiles"] for split, v in s["splits"].items()},
        "rejected": s["rejected"],
        "catalog_sha256": sha256_file(Path(out_dir) / "catalog.parquet"),
        "data_version": data_version,
        "code_version": code_version,
    }


# ------------------------------------------------------------------------------------------ validate


def validate_data(
    dataset_dir: str,
    report_path: str,
    *,
    params: str,
    profile: str,
    tracking_uri: str,
    docs_dir: str | None = None,
) -> dict[str, Any]:
    """Great Expectations suites over the catalog; raises :class:`StepFailed` naming each failure.
    ``docs_dir``: where GX's data docs site goes (``index.html`` and a page per suite, readable
    offline: data_validation.docs), also logged to MLflow under ``data_docs/``."""
    from data_validation.runner import thresholds_from_params, validate_catalog

    p = load(params, profile)
    with tracking.step_run(tracking_uri, "validate", params={"validate": p.validate.__dict__}):
        report = validate_catalog(
            Path(dataset_dir) / "catalog.parquet",
            thresholds_from_params(p),
            report_path=report_path,
            docs_dir=docs_dir,
        )
        if docs_dir is not None:
            mlflow.log_artifacts(docs_dir, "data_docs")
        mlflow.log_metrics({"evaluated": float(report.evaluated), "failed": float(len(report.failures))})
        named = named_file(report_path, VALIDATION_FILE)
        shutil.copyfile(report_path, named)
        mlflow.log_artifact(str(named))
        verdict = (
            f"PASSED: {report.evaluated} of {report.evaluated} expectations met"
            if report.success
            else f"FAILED: {len(report.failures)} of {report.evaluated} expectations not met"
        )
        mlflow.set_tag("hndsr.data_quality", verdict)
        quality = [f"# Data quality: {verdict}", "", f"Catalog: {Path(dataset_dir) / 'catalog.parquet'}", ""]
        quality += [f"- FAILED {f.line()}" for f in report.failures] or ["Every expectation was met."]
        mlflow.log_text("\n".join(quality) + "\n", "data_quality.md")
    if not report.success:
        lines = "\n".join(f"FAILED {f.line()}" for f in report.failures)
        raise StepFailed(
            f"data validation failed ({len(report.failures)} of {report.evaluated} expectations):\n{lines}"
        )
    return {"evaluated": report.evaluated, "tiles": report.counts["tiles"]}


# ------------------------------------------------------------------------------ initial and incumbent


def pin_initial_model(init_from: str, *, params: str, profile: str, tracking_uri: str) -> str:
    """``init_from`` resolved and verified (hash, architecture) -> the pinned identity the train steps
    receive (JSON). Raises with one line saying what is wrong and what to do."""
    from components.initial import pin_initial_model as pin

    with tempfile.TemporaryDirectory(prefix="hndsr-init-") as cache:
        pinned = pin(init_from, load(params, profile), tracking_uri=tracking_uri, cache_dir=cache)
    if pinned.uri:
        logger.info(
            "training starts from %s (sha256 %s, stages %s)", pinned.uri, pinned.sha256[:12], pinned.stages
        )
    else:
        logger.info("training starts from scratch (init_from none)")
    return pinned.to_json()


def resolve_incumbent(*, tracking_uri: str, model_name: str) -> str:
    """The model the challenger must beat: ``@champion``, or the release checkpoint (registered as the
    champion first) when the registry has none. JSON of its pinned identity."""
    from mlflow import MlflowClient

    from components.initial import PinnedModel

    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    current = tracking.champion_version(client, model_name)
    if current is None:
        current = tracking.register_release(tracking_uri, model_name)
    tags = current.tags or {}
    pinned = PinnedModel(
        init_from=f"models:/{model_name}@{tracking.CHAMPION}",
        uri=f"models:/{model_name}/{current.version}",
        sha256=tags.get("sha256", ""),
        version=str(current.version),
    )
    logger.info("incumbent: %s version %s (sha256 %s)", model_name, current.version, pinned.sha256[:12])
    return pinned.to_json()


# --------------------------------------------------------------------------------------------- train


def train_stage(
    stage: str,
    dataset_dir: str,
    out_dir: str,
    *,
    params: str,
    profile: str,
    epochs: int,
    tracking_uri: str,
    init_checkpoint: str = "",
    training_backend: str = "in-process",
    initial_model: str = "",
) -> dict[str, Any]:
    """Train one stage on the prepared train split, starting from ``init_checkpoint`` (earlier stages).

    ``initial_model`` is the run's pinned ``init_from`` (JSON; "" or none: from scratch). With one,
    the stages of ``finetune.stages`` continue training from its weights with the ``finetune.<stage>``
    recipe and the others are carried over unchanged; the first stage starts from it (not from
    ``init_checkpoint``). ``epochs`` > 0 overrides the steps (``epochs * steps_per_epoch``). Only the
    checkpoint (weights + config.json) lands in ``out_dir``; resumable state stays in a scratch folder.
    """
    from components.initial import PinnedModel, materialize
    from hndsr.training import train

    if training_backend not in TRAINING_BACKENDS:
        raise InputError(
            f"training_backend {training_backend!r} is not available: "
            f"use one of {', '.join(TRAINING_BACKENDS)}"
        )
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    overrides: dict[str, Any] = {
        "data.train_dir": str(Path(dataset_dir) / "train" / "hr"),
        "data.test_fraction": 0,  # prepare already held the test sources out
    }
    pinned = PinnedModel.from_json(initial_model)
    base = load(params, profile, overrides)
    finetuning = bool(pinned.uri)
    if finetuning:
        overrides |= base.finetune.overrides(stage)
    carried_over = finetuning and stage not in base.finetune.stages
    if epochs > 0:
        overrides[f"train.{stage}.steps"] = (
            epochs * load(params, profile, overrides).train.stage(stage).steps_per_epoch
        )
    p = load(params, profile, overrides)
    mode = "carried over" if carried_over else "fine-tuned" if finetuning else "from scratch"
    logged = {
        "stage": stage,
        "profile": profile or "base",
        "training_backend": training_backend,
        "init_from": pinned.init_from,
        "mode": mode,
    }
    with (
        tracking.step_run(
            tracking_uri, f"train_{stage}", params=logged | {"train": p.train.stage(stage).__dict__}
        ) as run,
        tempfile.TemporaryDirectory(prefix=f"hndsr-{stage}-") as work,
    ):
        if finetuning and stage == STAGES[0]:
            init_checkpoint = str(materialize(pinned, Path(work) / "initial", cache_dir=Path(work) / "cache"))
        if init_checkpoint:
            mlflow.set_tag("hndsr.init_sha256", read_checkpoint_config(init_checkpoint).get("sha256", ""))
        mlflow.set_tags({"hndsr.mode": mode, "hndsr.init_from": pinned.init_from})
        if carried_over:
            checkpoint = Path(init_checkpoint)
        elif training_backend == "pytorchjob":
            from components.pytorchjob import cli_args, train_stage_as_pytorchjob

            # Per-epoch metrics stay in the job's logs; this run records the final checkpoint.
            checkpoint = train_stage_as_pytorchjob(
                stage,
                overrides["data.train_dir"],
                params_text=params,
                run_id=run.info.run_id,
                init_checkpoint=init_checkpoint or None,
                extra_args=cli_args(profile, overrides),
            )
        else:
            checkpoint = train(
                p,
                work,
                stages=[stage],
                init_checkpoint=init_checkpoint or None,
                callbacks=[tracking.MlflowEpochLogger()],
                progress=False,
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(checkpoint / name, out / name)
        mlflow.log_artifacts(str(out), artifact_path=tracking.CHECKPOINT_ARTIFACT)
        config = read_checkpoint_config(out)
        mlflow.set_tag("hndsr.sha256", config["sha256"])
    return {
        "stage": stage,
        "stages": config["stages"],
        "version": config["package_version"],
        "sha256": config["sha256"],
        "mlflow_run_id": run.info.run_id,
        "steps": 0 if carried_over else p.train.stage(stage).steps,
        "mode": mode,
        "init_from": pinned.init_from,
        "init_sha256": pinned.sha256,
    }


# ------------------------------------------------------------------------------------------ evaluate


def test_images(dataset_dir: str, limit: int = 0) -> list[Path]:
    paths = list_images(Path(dataset_dir) / "test" / "hr")
    if not paths:
        raise InputError(
            f"no held-out test images in {dataset_dir}/test/hr: give the pipeline more source images "
            "(prepare holds data.test_fraction of the sources out)"
        )
    return paths[:limit] if limit else paths


def eval_data_id(paths: list[Path]) -> str:
    """Identity of a held-out set: the digest of its files' names and contents."""
    return _digest(sorted(f"{p.name}:{sha256_file(p)}" for p in paths))


def score_checkpoint(
    checkpoint_dir: str | Path, paths: list[Path], *, scales: list[float], steps: int, lpips: bool
) -> list[dict[str, Any]]:
    from hndsr.evaluation import evaluate_images
    from hndsr.inference import Upscaler

    model, _ = load_checkpoint(checkpoint_dir)
    lpips_model = None
    if lpips:
        from hndsr.lpips_weights import load_lpips

        lpips_model = load_lpips()
    upscaler = Upscaler(model)
    return [
        evaluate_images(upscaler, paths, scale=s, steps=steps, lpips_model=lpips_model).as_dict()
        for s in scales
    ]


def figure_name(who: str, metric: str, scale: float) -> str:
    return f"{who}_{metric}_x{scale:g}"


def _incumbent_checkpoint(incumbent: str, cache_dir: str) -> tuple[Path, dict[str, Any]]:
    from components.initial import PinnedModel, materialize

    pinned = PinnedModel.from_json(incumbent)
    directory = materialize(pinned, Path(cache_dir) / "incumbent", cache_dir=Path(cache_dir) / "fetch")
    return directory, {"version": pinned.version, "uri": pinned.uri, "sha256": pinned.sha256}


def evaluate_model(
    checkpoint_dir: str,
    dataset_dir: str,
    evaluation_path: str,
    report_path: str,
    metrics_path: str,
    *,
    params: str,
    profile: str,
    scales: list[float],
    diffusion_steps: int,
    lpips: bool,
    tracking_uri: str,
    incumbent: str = "",
    min_gain_db: float = 0.0,
    lpips_tolerance: float = 0.01,
    data_version: str = "",
    code_version: str = "",
) -> dict[str, float]:
    """Score the model (the challenger) beside the incumbent (pinned JSON from ``resolve_incumbent``;
    "" = none) and bicubic on the held-out test split, per scale, on the same images; write the JSON,
    the HTML report and the metrics; returns the measured flat figures (``model_psnr_y_x4``,
    ``incumbent_psnr_y_x4``, ``bicubic_ssim_y_x2`` ...; a metric not measured is left out, never faked).

    The JSON and the report also land beside their artifacts as ``evaluation.json`` and ``report.html``.
    The report's verdict applies the promotion gate (``min_gain_db``, ``lpips_tolerance``) to the
    figures measured here; the register step applies it again against the registry's champion."""
    from datetime import UTC, datetime

    from components.report import render_report
    from hndsr.evaluation import METRIC_KEYS
    from hndsr.inference import Upscaler

    if 4.0 not in [float(s) for s in scales]:
        raise InputError(f"scales {scales} must include 4: the promotion gate compares models at x4")
    p = load(params, profile)
    paths = test_images(dataset_dir, p.evaluate.limit)
    config = read_checkpoint_config(checkpoint_dir)
    float_scales = [float(s) for s in scales]
    with (
        tracking.step_run(
            tracking_uri,
            "evaluate",
            params={
                "scales": scales,
                "diffusion_steps": diffusion_steps,
                "images": len(paths),
                "lpips": lpips,
            },
            tags={"hndsr.sha256": config["sha256"]},
        ) as eval_run,
        tempfile.TemporaryDirectory(prefix="hndsr-incumbent-") as scratch,
    ):
        evaluations = score_checkpoint(
            checkpoint_dir, paths, scales=float_scales, steps=diffusion_steps, lpips=lpips
        )
        incumbent_info: dict[str, Any] | None = None
        incumbent_dir: Path | None = None
        if incumbent:
            incumbent_dir, incumbent_info = _incumbent_checkpoint(incumbent, scratch)
            if incumbent_info["sha256"] == config["sha256"]:
                scored = evaluations  # the same weights: the same scores, no second pass
            else:
                scored = score_checkpoint(
                    incumbent_dir, paths, scales=float_scales, steps=diffusion_steps, lpips=lpips
                )
            for ev, inc in zip(evaluations, scored, strict=True):
                ev["incumbent"] = inc["model"]
                for row, inc_row in zip(ev["per_image"], inc["per_image"], strict=True):
                    row["incumbent"] = inc_row["model"]
        whos = ("model", "incumbent", "bicubic") if incumbent_info else ("model", "bicubic")
        figures = {
            figure_name(who, key, ev["scale"]): float(ev[who][key])
            for ev in evaluations
            for who in whos
            for key in METRIC_KEYS
        }
        payload = {
            "evaluations": evaluations,
            "eval_data": eval_data_id(paths),
            "checkpoint_sha256": config["sha256"],
            "incumbent": incumbent_info,
            "figures": figures,
            "mlflow_run_id": eval_run.info.run_id,
        }
        evaluation_file = write_named(evaluation_path, EVALUATION_FILE, json.dumps(payload, indent=2) + "\n")
        model, _ = load_checkpoint(checkpoint_dir)
        incumbent_model = load_checkpoint(incumbent_dir)[0] if incumbent_dir is not None else None
        page = render_report(
            Upscaler(model),
            paths,
            evaluations,
            title="HNDSR evaluation",
            steps=diffusion_steps,
            incumbent=Upscaler(incumbent_model) if incumbent_model is not None else None,
            incumbent_label=f"incumbent v{incumbent_info['version']}" if incumbent_info else "",
            verdict=evaluation_verdict(
                figures,
                incumbent_info,
                min_gain_db=min_gain_db,
                lpips_tolerance=lpips_tolerance,
                versions={
                    "challenger": f"sha256 {config['sha256'][:12]}, "
                    f"hndsr {config.get('package_version', '?')}, "
                    f"stages {', '.join(config.get('stages', []))}",
                    "incumbent": (
                        f"{incumbent_info['uri']} (sha256 {incumbent_info['sha256'][:12]})"
                        if incumbent_info
                        else "none"
                    ),
                    "data": f"{data_version or 'n/a'} "
                    f"(held-out set {payload['eval_data']}, {len(paths)} images)",
                    "code": code_version or "n/a",
                    "evaluated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "profile": profile or "base",
                },
            ),
        )
        report_file = write_named(report_path, REPORT_FILE, page)
        measured = {k: v for k, v in figures.items() if math.isfinite(v)}  # NaN: not measured (no LPIPS)
        # The Metrics artifact's own file: kfp.local's cache only serves artifacts that exist on disk.
        Path(metrics_path).write_text(json.dumps(measured, indent=2) + "\n")
        # One name per metric and scale, a series per model (model/incumbent/bicubic): MLflow's chart
        # view groups them in one section, so the challenger is read beside its references.
        mlflow.log_metrics(
            {f"{key.split('_', 1)[1]}/{key.split('_', 1)[0]}": value for key, value in measured.items()}
        )
        mlflow.log_artifact(str(evaluation_file))
        mlflow.log_artifact(str(report_file))
    return measured


def evaluation_verdict(
    figures: dict[str, float],
    incumbent: dict[str, Any] | None,
    *,
    min_gain_db: float,
    lpips_tolerance: float,
    versions: dict[str, str],
) -> Any:
    """The promotion gate's rule applied to the figures of this evaluation (challenger vs the
    incumbent scored on the same images): the report's decision and why."""
    from components.report import Verdict

    candidate = tracking.Figures(
        figures.get("model_psnr_y_x4", math.nan), figures.get("model_lpips_x4", math.nan)
    )
    champion = (
        tracking.Figures(
            figures.get("incumbent_psnr_y_x4", math.nan), figures.get("incumbent_lpips_x4", math.nan)
        )
        if incumbent
        else None
    )
    decision = tracking.decide_promotion(
        candidate,
        champion,
        lpips_tolerance=lpips_tolerance,
        champion_version=incumbent["version"] if incumbent else None,
        min_gain_db=min_gain_db,
    )
    gate = (
        f"champion only if the challenger's Y-PSNR at x4 beats the incumbent's by at least "
        f"{min_gain_db:g} dB and its LPIPS at x4 is not worse by more than {lpips_tolerance:g}; "
        "applied again by the register step against the registry's champion at that time"
    )
    return Verdict(decision=decision.alias, reason=decision.reason, gate=gate, versions=versions)


# ------------------------------------------------------------------------------------------ register


def training_recipe(profile: str, training: dict[str, Any], code_version: str = "") -> str:
    """One paragraph: the params.yaml profile, how the last stage was trained and from what."""
    text = f"params.yaml profile **{profile or 'base'}**"
    if profile == "quick":
        text += " (minutes on 2 CPU cores: a smoke-test budget, not the release recipe)"
    elif profile:
        text += " (not the release recipe: see params.yaml's profiles)"
    else:
        text += " (the release recipe)"
    if training:
        text += (
            f"; last stage {training.get('stage', '?')} {training.get('mode', '?')}"
            f" for {training.get('steps', '?')} steps"
        )
        if training.get("init_from"):
            text += f", starting from `{training['init_from']}`"
            if training.get("init_sha256"):
                text += f" (sha256 `{str(training['init_sha256'])[:12]}`)"
    if code_version:
        text += f"; code version `{code_version}`"
    return text + "."


def link_version(
    client: Any, model_name: str, version: str, evaluation: dict[str, Any], x4: dict[str, Any]
) -> None:
    """The registered version names its evaluate run, report and baselines (tags and description),
    so the registry page leads to the evidence behind the decision."""
    evaluate_run = evaluation.get("mlflow_run_id", "")
    register_run = mlflow.active_run()
    tags = {
        "bicubic_psnr_y_x4": f"{x4['bicubic']['psnr_y']:.4f}",
        "bicubic_lpips_x4": f"{x4['bicubic']['lpips']:.4f}",
        "eval_images": str(x4["n_images"]),
    }
    if evaluate_run:
        tags |= {
            "evaluate_run_id": evaluate_run,
            "report": f"runs:/{evaluate_run}/{REPORT_FILE}",
            "evaluation": f"runs:/{evaluate_run}/{EVALUATION_FILE}",
        }
    if register_run is not None:
        tags["model_card"] = f"runs:/{register_run.info.run_id}/{MODEL_CARD_FILE}"
    pipeline_run = os.environ.get(tracking.PARENT_RUN_ENV, "")
    if pipeline_run:
        tags["pipeline_run_id"] = pipeline_run
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    current = client.get_model_version(model_name, version).description or ""
    links = " | ".join(f"{k}: {tags[k]}" for k in ("report", "evaluation", "model_card") if k in tags)
    if links and links not in current:
        client.update_model_version(model_name, version, description=f"{current}\n\n{links}".strip())


def register_model(
    checkpoint_dir: str,
    mlflow_run_id: str,
    evaluation_path: str,
    dataset_dir: str,
    model_card_path: str,
    *,
    tracking_uri: str,
    model_name: str,
    lpips_tolerance: float,
    report_uri: str = "",
    min_gain_db: float = 0.0,
    profile: str = "",
    training: dict[str, Any] | None = None,
    data_version: str = "",
    code_version: str = "",
) -> dict[str, Any]:
    """Register the checkpoint logged by the run ``mlflow_run_id`` and apply the promotion gate;
    write the model card (``model_card.md`` beside the artifact). ``training``: the trained model
    artifact's metadata (mode, init_from, steps) for the card's recipe. Returns the summary the main
    job prints, with ``file://`` links to the report, the evaluation JSON and the model card."""
    from hndsr.model_card import render_model_card
    from serving.storage import resolve_storage_uri

    evaluation = json.loads(Path(evaluation_path).read_text())
    figures = evaluation["figures"]
    candidate = tracking.Figures(
        figures.get("model_psnr_y_x4", math.nan), figures.get("model_lpips_x4", math.nan)
    )
    x4 = next(ev for ev in evaluation["evaluations"] if float(ev["scale"]) == 4.0)
    lpips = math.isfinite(candidate.lpips)
    scored_incumbent = evaluation.get("incumbent") or None
    incumbent = (
        tracking.Figures(
            figures.get("incumbent_psnr_y_x4", math.nan), figures.get("incumbent_lpips_x4", math.nan)
        )
        if scored_incumbent
        else None
    )

    def rescore(uri: str) -> tracking.Figures:
        # The very images the candidate was scored on (by name: artifact paths differ between pods).
        names = {Path(row["path"]).name for row in x4["per_image"]}
        paths = [p for p in test_images(dataset_dir) if p.name in names]
        with tempfile.TemporaryDirectory(prefix="hndsr-champion-") as cache:
            checkpoint = resolve_storage_uri(uri, cache_dir=cache)
            ev = score_checkpoint(checkpoint, paths, scales=[4.0], steps=int(x4["steps"]), lpips=lpips)[0]
        return tracking.Figures(ev["model"]["psnr_y"], ev["model"]["lpips"])

    config = read_checkpoint_config(checkpoint_dir)
    with tracking.step_run(tracking_uri, "register", params={"model_name": model_name}):
        registration = tracking.register_checkpoint(
            tracking_uri=tracking_uri,
            run_id=mlflow_run_id,
            sha256=config["sha256"],
            figures=candidate,
            eval_data=evaluation["eval_data"],
            lpips_tolerance=lpips_tolerance,
            name=model_name,
            rescore_champion=rescore,
            incumbent=incumbent,
            incumbent_version=scored_incumbent["version"] if scored_incumbent else None,
            min_gain_db=min_gain_db,
        )
        tracking.record_decision(registration)
        client = mlflow.MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
        champion = tracking.champion_version(client, model_name)
        card = render_model_card(
            config,
            evaluation["evaluations"],
            title=f"HNDSR {registration.uri} ({registration.alias})",
            data=(
                f"Held-out test split of the prepared data set: {x4['n_images']} images, id "
                f"`{evaluation['eval_data']}` (digest of the held-out files' names and contents). The "
                f"prepare run's `hndsr.data_version` `{data_version or 'n/a'}` is the digest of the raw "
                "input the split was cut from: two ids because they name two things."
            ),
            licence="See the data set's own licence (the sample imagery is NEON, CC0).",
            reproduce=f"hndsr pipeline run --local --profile {profile or 'base'}",
            notes=f"Promotion: **{registration.alias}** — {registration.decision.reason}.",
            recipe=training_recipe(profile, training or {}, code_version),
        )
        card_file = write_named(model_card_path, MODEL_CARD_FILE, card)
        mlflow.log_artifact(str(card_file))
        link_version(client, model_name, registration.version, evaluation, x4)
    x4_model, x4_bicubic = x4["model"], x4["bicubic"]
    return {
        "model": model_name,
        "version": registration.version,
        "alias": registration.alias,
        "reason": registration.decision.reason,
        "champion_version": str(champion.version) if champion is not None else "",
        "tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
        "report": named_uri(report_uri, REPORT_FILE) if report_uri else "",
        "evaluation": str(named_file(evaluation_path, EVALUATION_FILE)),
        "model_card": str(card_file),
        "links": {
            "report": file_uri(named_uri(report_uri, REPORT_FILE)) if report_uri else "",
            "evaluation": file_uri(named_file(evaluation_path, EVALUATION_FILE)),
            "model_card": file_uri(card_file),
        },
        "x4": {
            "model": x4_model,
            "bicubic": x4_bicubic,
            "incumbent": x4.get("incumbent"),
            "incumbent_version": scored_incumbent["version"] if scored_incumbent else "",
            "n_images": x4["n_images"],
        },
        "gate": {"min_gain_db": min_gain_db, "lpips_tolerance": lpips_tolerance},
    }
