"""The promotion gate and the registry round trip against a real MLflow sqlite store; the champion
loads through the serving storage resolver exactly as the predictor loads it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from registry_helpers import log_tiny_checkpoint, register_logged

from components import registry, tracking
from components.promotion import CHALLENGER, CHAMPION, Figures, decide_promotion
from hndsr.checkpoint import load_checkpoint
from serving.storage import resolve_storage_uri

TOL = 0.01


def test_gate_first_model_is_champion() -> None:
    d = decide_promotion(Figures(25.0, 0.3), None, lpips_tolerance=TOL)
    assert d.alias == CHAMPION and "first" in d.reason


def test_gate_better_psnr_and_lpips_within_tolerance_promotes() -> None:
    d = decide_promotion(Figures(25.1, 0.305), Figures(25.0, 0.30), lpips_tolerance=TOL, champion_version="3")
    assert d.alias == CHAMPION and d.champion_version == "3"


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        (Figures(24.9, 0.20), "does not beat"),  # worse PSNR, however good the LPIPS
        (Figures(25.0, 0.30), "does not beat"),  # a tie is not a win
        (Figures(25.5, 0.32), "LPIPS"),  # better PSNR, LPIPS worse by more than the tolerance
        (Figures(25.5, math.nan), "no LPIPS"),  # cannot show the LPIPS is not worse
        (Figures(math.nan, 0.1), "no held-out"),
    ],
)
def test_gate_keeps_the_champion(candidate: Figures, why: str) -> None:
    d = decide_promotion(candidate, Figures(25.0, 0.30), lpips_tolerance=TOL)
    assert d.alias == CHALLENGER and why in d.reason


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _aliases(uri: str) -> dict[str, str]:
    model = MlflowClient(uri).get_registered_model(registry.MODEL_NAME)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_registry_first_better_worse_and_reuse(store: str, tmp_path: Path) -> None:
    first = register_logged(store, log_tiny_checkpoint(store, tmp_path / "c1", seed=1), Figures(25.0, 0.30))
    assert (first.version, first.alias) == ("1", CHAMPION)

    worse = register_logged(store, log_tiny_checkpoint(store, tmp_path / "c2", seed=2), Figures(24.0, 0.25))
    assert (worse.version, worse.alias) == ("2", CHALLENGER)
    assert worse.decision.champion == Figures(25.0, 0.30) and worse.decision.champion_version == "1"
    assert _aliases(store) == {CHAMPION: "1", CHALLENGER: "2"}

    third = log_tiny_checkpoint(store, tmp_path / "c3", seed=3)
    better = register_logged(store, third, Figures(26.0, 0.305))
    assert (better.version, better.alias) == ("3", CHAMPION)
    assert _aliases(store) == {CHAMPION: "3", CHALLENGER: "2"}

    again = register_logged(store, third, Figures(26.0, 0.305))  # an unchanged re-run: no new version
    assert again.reused and (again.version, again.alias) == ("3", CHAMPION)
    assert len(MlflowClient(store).search_model_versions(f"name='{registry.MODEL_NAME}'")) == 3

    # The decision and its figures are on the registering run.
    with tracking.step_run(store, "register") as run:
        registry.record_decision(better)
    recorded = MlflowClient(store).get_run(run.info.run_id).data
    assert recorded.tags["promotion.alias"] == CHAMPION and recorded.tags["promotion.version"] == "3"
    assert recorded.metrics["candidate_psnr_y_x4"] == 26.0 and recorded.metrics["champion_psnr_y_x4"] == 25.0

    # Serving resolves the alias to the champion's checkpoint directory, and it verifies.
    mlflow.set_tracking_uri(store)
    local = resolve_storage_uri("models:/hndsr@champion", cache_dir=tmp_path / "cache")
    _, config = load_checkpoint(local)
    assert config["sha256"] == third[1]


def test_champion_scored_on_other_images_is_rescored(store: str, tmp_path: Path) -> None:
    register_logged(
        store,
        log_tiny_checkpoint(store, tmp_path / "c1", seed=1),
        Figures(30.0, 0.2),
        "old-test-set",
    )
    seen: list[str] = []

    def rescore(uri: str) -> Figures:
        seen.append(uri)
        return Figures(20.0, 0.4)  # on the new images the old champion is much weaker

    result = register_logged(
        store,
        log_tiny_checkpoint(store, tmp_path / "c2", seed=2),
        Figures(22.0, 0.4),
        "new-test-set",
        rescore_champion=rescore,
    )
    assert seen == ["models:/hndsr/1"]
    assert result.alias == CHAMPION and result.decision.champion == Figures(20.0, 0.4)


def test_gate_margin() -> None:
    d = decide_promotion(Figures(25.04, 0.30), Figures(25.0, 0.30), lpips_tolerance=TOL, min_gain_db=0.05)
    assert d.alias == CHALLENGER and "margin of 0.05 dB (+0.0400 dB)" in d.reason
    d = decide_promotion(Figures(25.06, 0.30), Figures(25.0, 0.30), lpips_tolerance=TOL, min_gain_db=0.05)
    assert d.alias == CHAMPION and "+0.0600 dB" in d.reason


def test_incumbent_scored_beside_the_candidate_is_used_while_it_is_the_champion(
    store: str, tmp_path: Path
) -> None:
    """The release becomes version 1 (champion) of an empty registry; the gate then uses the incumbent's
    figures from the candidate's own evaluation, and both versions record the challenge."""
    release = registry.register_release(store)
    assert (str(release.version), release.tags["source"]) == ("1", "release")
    assert str(registry.register_release(store).version) == "1"  # idempotent
    seen: list[str] = []
    result = register_logged(
        store,
        log_tiny_checkpoint(store, tmp_path / "c", seed=1),
        Figures(21.0, 0.40),
        "user-tiles",
        rescore_champion=lambda uri: seen.append(uri) or Figures(0.0, 0.0),
        incumbent=Figures(20.9, 0.40),
        incumbent_version="1",
        min_gain_db=0.05,
    )
    assert not seen  # scored beside it: no rescoring
    assert result.alias == CHAMPION and result.decision.champion == Figures(20.9, 0.40)
    client = MlflowClient(store)
    challenger = client.get_model_version(registry.MODEL_NAME, "2")
    assert (
        challenger.tags["incumbent_version"] == "1" and float(challenger.tags["incumbent_psnr_y_x4"]) == 20.9
    )
    incumbent = client.get_model_version(registry.MODEL_NAME, "1")
    assert json.loads(incumbent.tags["challenged_by.v2"]) == {
        "alias": CHAMPION,
        "psnr_y_x4": 21.0,
        "lpips_x4": 0.4,
    }
    # Figures of an incumbent that is no longer the champion are not used: the champion is rescored.
    later = register_logged(
        store,
        log_tiny_checkpoint(store, tmp_path / "c3", seed=3),
        Figures(21.0, 0.40),
        "user-tiles",
        incumbent=Figures(1.0, 0.40),
        incumbent_version="1",
    )
    assert later.decision.champion == Figures(21.0, 0.40) and later.alias == CHALLENGER  # v2's own figures
