"""The evaluation step: the challenger beside the incumbent and bicubic on the held-out split, its
JSON, HTML report, metrics and verdict."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components import promotion, tracking
from components.artifact_files import EVALUATION_FILE, REPORT_FILE, write_named
from components.step_params import load
from hndsr.checkpoint import load_checkpoint, read_checkpoint_config
from hndsr.data import list_images
from hndsr.errors import InputError
from hndsr.files import sha256_file


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
    lines = sorted(f"{p.name}:{sha256_file(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


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

    candidate = promotion.Figures(
        figures.get("model_psnr_y_x4", math.nan), figures.get("model_lpips_x4", math.nan)
    )
    champion = (
        promotion.Figures(
            figures.get("incumbent_psnr_y_x4", math.nan), figures.get("incumbent_lpips_x4", math.nan)
        )
        if incumbent
        else None
    )
    decision = promotion.decide_promotion(
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
