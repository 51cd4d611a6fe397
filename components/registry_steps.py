"""The register step: the model version, the promotion gate, the model card and the links between
them in the registry."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components import promotion, registry, tracking
from components.artifact_files import (
    EVALUATION_FILE,
    MODEL_CARD_FILE,
    REPORT_FILE,
    file_uri,
    named_file,
    named_uri,
    write_named,
)
from components.evaluation_steps import score_checkpoint, test_images
from hndsr.checkpoint import read_checkpoint_config


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
    candidate = promotion.Figures(
        figures.get("model_psnr_y_x4", math.nan), figures.get("model_lpips_x4", math.nan)
    )
    x4 = next(ev for ev in evaluation["evaluations"] if float(ev["scale"]) == 4.0)
    lpips = math.isfinite(candidate.lpips)
    scored_incumbent = evaluation.get("incumbent") or None
    incumbent = (
        promotion.Figures(
            figures.get("incumbent_psnr_y_x4", math.nan), figures.get("incumbent_lpips_x4", math.nan)
        )
        if scored_incumbent
        else None
    )

    def rescore(uri: str) -> promotion.Figures:
        # The very images the candidate was scored on (by name: artifact paths differ between pods).
        names = {Path(row["path"]).name for row in x4["per_image"]}
        paths = [p for p in test_images(dataset_dir) if p.name in names]
        with tempfile.TemporaryDirectory(prefix="hndsr-champion-") as cache:
            checkpoint = resolve_storage_uri(uri, cache_dir=cache)
            ev = score_checkpoint(checkpoint, paths, scales=[4.0], steps=int(x4["steps"]), lpips=lpips)[0]
        return promotion.Figures(ev["model"]["psnr_y"], ev["model"]["lpips"])

    config = read_checkpoint_config(checkpoint_dir)
    with tracking.step_run(tracking_uri, "register", params={"model_name": model_name}):
        registration = registry.register_checkpoint(
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
        registry.record_decision(registration)
        client = mlflow.MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
        champion = registry.champion_version(client, model_name)
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
