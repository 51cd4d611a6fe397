"""MLflow adapter: one run per pipeline step, per-epoch training metrics, the model registry and the
promotion gate. The core never imports mlflow; it reports through ``hndsr.training.TrainingCallback``.

Tracking URI: the given one, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` with
artifacts in ``<cwd>/mlartifacts``. A tracking server with S3 artifacts works the same way (its
clients read ``AWS_ENDPOINT_URL`` / keys from the environment).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

EXPERIMENT = "hndsr"
MODEL_NAME = "hndsr"
CHAMPION = "champion"
CHALLENGER = "challenger"
CHECKPOINT_ARTIFACT = "checkpoint"  # artifact path of a checkpoint directory inside a run
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_tracking_uri(uri: str = "") -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _local_artifact_root(uri: str) -> str | None:
    """``file://<dir of the sqlite file>/mlartifacts`` for a sqlite store (MLflow would use ./mlruns of
    whatever directory a step happens to run in)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(urlparse(uri).path)
    return (db.parent / "mlartifacts").resolve().as_uri()


def use_experiment(tracking_uri: str, name: str = EXPERIMENT) -> str:
    """Point mlflow at ``tracking_uri`` and make ``name`` the active experiment; returns its id."""
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=_local_artifact_root(uri))
        except MlflowException:  # created by a concurrent step meanwhile
            found = client.get_experiment_by_name(name)
            assert found is not None
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
    if found is None or found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # MLflow 3 opens an experiment without a kind in its GenAI view (traces, token usage).
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: Set by ``hndsr pipeline run --local`` around a pipeline run: the steps' runs nest under it.
PARENT_RUN_ENV = "HNDSR_PARENT_RUN_ID"


def start_pipeline_run(tracking_uri: str, name: str, tags: Mapping[str, str]) -> str:
    """The parent MLflow run of one pipeline run; its id goes to the steps through ``PARENT_RUN_ENV``
    (kfp.local's tasks inherit the environment). Returns the run id."""
    use_experiment(tracking_uri)
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    run = client.create_run(
        experiment.experiment_id, run_name=name, tags={"hndsr.step": "pipeline", **dict(tags)}
    )
    return str(run.info.run_id)


def end_pipeline_run(
    tracking_uri: str, run_id: str, summary: Mapping[str, Any] | None, error: str = ""
) -> None:
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if summary is not None:
        client.log_dict(run_id, dict(summary), "summary.json")
        client.set_tag(
            run_id, "hndsr.decision", f"version {summary.get('version')} -> {summary.get('alias')}"
        )
    if error:
        client.set_tag(run_id, "hndsr.error", error[:5000])
    client.set_terminated(run_id, "FAILED" if error else "FINISHED")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"train.operator.steps": "120"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


@contextmanager
def step_run(
    tracking_uri: str,
    step: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one pipeline step, tagged ``hndsr.step``; a failing step ends it FAILED."""
    use_experiment(tracking_uri)
    parent = os.environ.get(PARENT_RUN_ENV, "")
    nesting = {"mlflow.parentRunId": parent, "hndsr.pipeline_run": parent} if parent else {}
    with mlflow.start_run(run_name=step, tags={"hndsr.step": step, **nesting, **(tags or {})}) as run:
        if params:
            mlflow.log_params(flatten(params))
        yield run


class MlflowEpochLogger:
    """A ``hndsr.training.TrainingCallback``: every epoch's metrics of a stage, at its global step."""

    def __call__(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        values = {f"{stage}.{k}": v for k, v in metrics.items() if math.isfinite(v)}
        mlflow.log_metrics(values | {f"{stage}.epoch": float(epoch)}, step=step)


# ------------------------------------------------------------------------------------- promotion gate


@dataclass(frozen=True)
class Figures:
    """The gate's figures: held-out Y-PSNR (dB) and LPIPS at x4 (NaN = not measured)."""

    psnr_y: float
    lpips: float


@dataclass(frozen=True)
class PromotionDecision:
    alias: str  # CHAMPION or CHALLENGER
    reason: str
    candidate: Figures
    champion: Figures | None
    champion_version: str | None
    lpips_tolerance: float
    min_gain_db: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    candidate: Figures,
    champion: Figures | None,
    *,
    lpips_tolerance: float,
    champion_version: str | None = None,
    min_gain_db: float = 0.0,
) -> PromotionDecision:
    """Champion only if the candidate beats the champion's Y-PSNR by at least ``min_gain_db`` (and by
    something when that is 0) and its LPIPS is not worse by more than ``lpips_tolerance``; the first
    model with a finite Y-PSNR becomes champion."""

    def decision(alias: str, reason: str) -> PromotionDecision:
        return PromotionDecision(
            alias, reason, candidate, champion, champion_version, lpips_tolerance, min_gain_db
        )

    if not math.isfinite(candidate.psnr_y):
        return decision(CHALLENGER, "the candidate has no held-out Y-PSNR at x4")
    if champion is None:
        return decision(CHAMPION, "first model in the registry")
    gain = candidate.psnr_y - champion.psnr_y
    if not (gain > 0 and gain >= min_gain_db):
        return decision(
            CHALLENGER,
            f"Y-PSNR x4 {candidate.psnr_y:.4f} dB does not beat the champion's {champion.psnr_y:.4f} dB "
            f"by the gate's margin of {min_gain_db:g} dB ({gain:+.4f} dB)",
        )
    if math.isfinite(champion.lpips):
        if not math.isfinite(candidate.lpips):
            return decision(CHALLENGER, "the candidate has no LPIPS to compare with the champion's")
        if candidate.lpips > champion.lpips + lpips_tolerance:
            return decision(
                CHALLENGER,
                f"LPIPS x4 {candidate.lpips:.4f} is worse than the champion's {champion.lpips:.4f} by more "
                f"than {lpips_tolerance:g}",
            )
    return decision(
        CHAMPION,
        f"Y-PSNR x4 {candidate.psnr_y:.4f} dB beats the champion's {champion.psnr_y:.4f} dB by "
        f"{gain:+.4f} dB (margin {min_gain_db:g}) and LPIPS {candidate.lpips:.4f} is within "
        f"{lpips_tolerance:g} of {champion.lpips:.4f}",
    )


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
