"""The MLflow model registry: versions by weights (sha256), the champion alias set by the promotion
gate, the decision recorded on the register run, and the release checkpoint as the first champion."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from components.promotion import CHALLENGER, CHAMPION, Figures, PromotionDecision, decide_promotion
from components.tracking import CHECKPOINT_ARTIFACT, resolve_tracking_uri, step_run

logger = logging.getLogger(__name__)

MODEL_NAME = "hndsr"


def _figures_of(version: ModelVersion) -> Figures:
    tags = version.tags or {}
    return Figures(float(tags.get("psnr_y_x4", "nan")), float(tags.get("lpips_x4", "nan")))


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    decision: PromotionDecision
    reused: bool  # the same weights were already registered: nothing new was decided

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _version_with_weights(client: MlflowClient, name: str, sha256: str) -> ModelVersion | None:
    """The version of ``name`` holding these weights (creating the registered model if needed)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="HNDSR super-resolution checkpoints")
    for version in client.search_model_versions(f"name='{name}'"):
        if (version.tags or {}).get("sha256") == sha256:
            return version
    return None


def champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_checkpoint(
    *,
    tracking_uri: str,
    run_id: str,
    sha256: str,
    figures: Figures,
    eval_data: str,
    lpips_tolerance: float,
    name: str = MODEL_NAME,
    rescore_champion: Callable[[str], Figures] | None = None,
    incumbent: Figures | None = None,
    incumbent_version: str | None = None,
    min_gain_db: float = 0.0,
) -> Registration:
    """Register the checkpoint logged under ``run_id`` (artifact ``checkpoint``) and apply the gate.

    ``incumbent`` holds the champion's figures when it was scored beside the candidate (same images,
    same run) as version ``incumbent_version``; they are used while that version is still the champion.
    Otherwise ``eval_data`` identifies the held-out set the figures come from. When the champion was scored on
    another set, ``rescore_champion(champion's models:/ URI)`` scores it on this one, so the gate never
    compares figures from different images. Registering weights (same sha256) already in the
    registry returns that version and its recorded decision.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    existing = _version_with_weights(client, name, sha256)
    if existing is not None:
        recorded = json.loads((existing.tags or {}).get("promotion", "{}") or "{}")
        aliases = set(existing.aliases or [])
        alias = CHAMPION if CHAMPION in aliases else recorded.get("alias", CHALLENGER)
        decision = PromotionDecision(
            alias=alias,
            reason=f"already registered as version {existing.version}: {recorded.get('reason', '')}",
            candidate=_figures_of(existing),
            champion=None,
            champion_version=None,
            lpips_tolerance=lpips_tolerance,
        )
        return Registration(name, str(existing.version), alias, decision, reused=True)

    current = champion_version(client, name)
    champion: Figures | None = None
    if current is not None and incumbent is not None and str(current.version) == incumbent_version:
        champion = incumbent
    elif current is not None:
        champion = _figures_of(current)
        if (current.tags or {}).get("eval_data") != eval_data and rescore_champion is not None:
            logger.info("champion v%s was scored on other images: rescoring it here", current.version)
            champion = rescore_champion(f"models:/{name}/{current.version}")
    decision = decide_promotion(
        figures,
        champion,
        lpips_tolerance=lpips_tolerance,
        champion_version=str(current.version) if current is not None else None,
        min_gain_db=min_gain_db,
    )
    compared = {}
    if champion is not None and current is not None:
        compared = {
            "incumbent_version": str(current.version),
            "incumbent_psnr_y_x4": repr(champion.psnr_y),
            "incumbent_lpips_x4": repr(champion.lpips),
        }
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}",
        run_id=run_id,
        tags={
            "sha256": sha256,
            "psnr_y_x4": repr(figures.psnr_y),
            "lpips_x4": repr(figures.lpips),
            "eval_data": eval_data,
            "promotion": json.dumps({"alias": decision.alias, "reason": decision.reason}),
        }
        | compared,
        description=decision.reason,
    )
    if current is not None:  # the incumbent keeps a record of every challenge and its outcome
        challenge = {"alias": decision.alias, "psnr_y_x4": figures.psnr_y, "lpips_x4": figures.lpips}
        client.set_model_version_tag(
            name, current.version, f"challenged_by.v{version.version}", json.dumps(challenge)
        )
    client.set_registered_model_alias(name, decision.alias, version.version)
    logger.info("registered %s version %s as %s: %s", name, version.version, decision.alias, decision.reason)
    return Registration(name, str(version.version), decision.alias, decision, reused=False)


def record_decision(registration: Registration) -> None:
    """The decision and its figures on the active run (the register step's)."""
    d = registration.decision
    mlflow.set_tags(
        {
            "promotion.alias": d.alias,
            "promotion.reason": d.reason[:5000],
            "promotion.version": registration.version,
            "promotion.reused": str(registration.reused).lower(),
            "promotion.champion_version": d.champion_version or "",
        }
    )
    mlflow.log_params({"lpips_tolerance": d.lpips_tolerance, "min_gain_db": d.min_gain_db})
    figures = {"candidate_psnr_y_x4": d.candidate.psnr_y, "candidate_lpips_x4": d.candidate.lpips}
    if d.champion is not None:
        figures |= {"champion_psnr_y_x4": d.champion.psnr_y, "champion_lpips_x4": d.champion.lpips}
    mlflow.log_metrics({k: v for k, v in figures.items() if math.isfinite(v)})
    mlflow.log_dict(d.as_dict(), "promotion.json")


def register_release(tracking_uri: str, name: str = MODEL_NAME) -> ModelVersion:
    """Make the release checkpoint the champion of a registry that has none: registered once (its
    weights, card and held-out figures logged in a ``register_release`` run), then aliased."""
    from hndsr import __version__
    from hndsr.checkpoint import load_release_checkpoint, release_checkpoint_dir

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    _, config = load_release_checkpoint()  # verifies its hash
    sha256 = str(config["sha256"])
    existing = _version_with_weights(client, name, sha256)
    if existing is not None:
        client.set_registered_model_alias(name, CHAMPION, existing.version)
        return client.get_model_version(name, existing.version)
    directory = release_checkpoint_dir()
    evaluation = json.loads((directory / "evaluation.json").read_text())
    x4 = next(ev for ev in evaluation["evaluations"] if float(ev["scale"]) == 4.0 and not ev["steps"])
    reason = (
        f"the release checkpoint of hndsr {__version__}: the incumbent while the registry had no champion"
    )
    with step_run(tracking_uri, "register_release", tags={"hndsr.sha256": sha256}) as run:
        mlflow.log_artifact(str(directory / "config.json"), CHECKPOINT_ARTIFACT)
        mlflow.log_artifact(str(directory / "model.safetensors"), CHECKPOINT_ARTIFACT)
        mlflow.log_artifact(str(directory / "MODEL_CARD.md"))
        mlflow.log_artifact(str(directory / "evaluation.json"))
        mlflow.log_metrics(
            {"release_psnr_y_x4": x4["model"]["psnr_y"], "release_lpips_x4": x4["model"]["lpips"]}
        )
    version = client.create_model_version(
        name,
        source=f"runs:/{run.info.run_id}/{CHECKPOINT_ARTIFACT}",
        run_id=run.info.run_id,
        tags={
            "sha256": sha256,
            "psnr_y_x4": repr(float(x4["model"]["psnr_y"])),
            "lpips_x4": repr(float(x4["model"]["lpips"])),
            "eval_data": "release-held-out",
            "source": "release",
            "promotion": json.dumps({"alias": CHAMPION, "reason": reason}),
        },
        description=reason + " (model card: MODEL_CARD.md in its run)",
    )
    client.set_registered_model_alias(name, CHAMPION, version.version)
    logger.info("registered the release checkpoint as %s version %s (champion)", name, version.version)
    return version
