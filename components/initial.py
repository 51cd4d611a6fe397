"""The models a pipeline run starts from and is measured against.

- ``init_from`` (the model training starts from): ``release`` (the checkpoint shipped in the package),
  ``none`` (from scratch), a checkpoint directory, ``s3://bucket/prefix`` or ``models:/name@alias`` /
  ``models:/name/version``. It is resolved once, at the first step, to a pinned identity (a concrete
  location and the weights' sha256) that the train steps receive as a parameter: the training tasks
  stay cacheable while ``@champion`` moves, and a checkpoint replaced behind that location is refused.
- The incumbent: the registry's ``@champion``; with none, the release checkpoint, registered first.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, read_checkpoint_config
from hndsr.config import Params
from hndsr.errors import CheckpointError, InputError
from hndsr.models.hndsr_model import resolve_config

logger = logging.getLogger(__name__)

NONE = "none"
RELEASE = "release"
# The weights' shapes; "scheduler" and "sampling" are inference settings a checkpoint may change.
ARCHITECTURE_SECTIONS = ("autoencoder", "operator", "diffusion")


@dataclass(frozen=True)
class PinnedModel:
    """A checkpoint pinned by content: where to fetch it and the sha256 its weights must have."""

    init_from: str  # as the user gave it
    uri: str = ""  # "" = no model (init_from none); else release, a directory, s3://, models:/name/N
    sha256: str = ""
    stages: tuple[str, ...] = ()
    version: str = ""  # registry version, when it came from the registry

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PinnedModel:
        if not text:
            return cls(init_from=NONE)
        values = json.loads(text)
        values["stages"] = tuple(values.get("stages", ()))
        return cls(**values)


def _concrete_registry_uri(uri: str, tracking_uri: str) -> tuple[str, str]:
    """``models:/name@alias`` -> (``models:/name/N``, N); a version URI is returned as it is."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.tracking import resolve_tracking_uri

    rest = uri[len("models:/") :]
    if "@" not in rest:
        return uri, rest.rsplit("/", 1)[-1]
    name, alias = rest.split("@", 1)
    try:
        version = MlflowClient(resolve_tracking_uri(tracking_uri)).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise CheckpointError(
            f"init_from {uri}: the registry has no {name}@{alias} ({str(exc).splitlines()[0][:200]}); "
            "pass init_from: release, none or an existing version"
        ) from exc
    return f"models:/{name}/{version.version}", str(version.version)


def fetch(uri: str, cache_dir: str | Path) -> Path:
    """A local checkpoint directory for ``uri`` (downloaded for s3:// and models:/)."""
    from serving.storage import resolve_storage_uri

    return resolve_storage_uri(uri, cache_dir=cache_dir)


def check_architecture(config: dict[str, Any], params: Params, where: str) -> None:
    """Fine-tuning needs the weights of the architecture params.yaml trains."""
    wanted = resolve_config(params.model)
    # Resolved like the model's constructor does: keys added since a checkpoint was written take their
    # defaults (the design it was trained with).
    actual = resolve_config(config.get("model_config") or {})
    differences = [
        f"{section}.{key} {actual.get(section, {}).get(key)!r} != {value!r}"
        for section, values in wanted.items()
        if section in ARCHITECTURE_SECTIONS
        for key, value in values.items()
        if actual.get(section, {}).get(key) != value
    ]
    if differences:
        raise CheckpointError(
            f"init_from {where} has a different architecture from params.yaml's model "
            f"({'; '.join(differences[:3])}): pass init_from: none to train from scratch, or a checkpoint "
            "of this architecture"
        )


def pin_initial_model(
    init_from: str, params: Params, *, tracking_uri: str, cache_dir: str | Path
) -> PinnedModel:
    """Resolve and verify ``init_from`` (hash and architecture): the one place a bad one fails."""
    init_from = init_from.strip()
    if init_from.lower() == NONE:
        return PinnedModel(init_from=NONE)
    if not init_from:
        raise InputError(
            "init_from is empty: pass release, none, a checkpoint directory, s3://... or models:/..."
        )
    uri, version = init_from, ""
    if init_from.startswith("models:/"):
        uri, version = _concrete_registry_uri(init_from, tracking_uri)
    elif init_from != RELEASE and "://" not in init_from:
        path = Path(init_from)
        if not path.exists():
            raise CheckpointError(
                f"init_from {init_from}: no such checkpoint directory; pass release, none, a checkpoint "
                "directory (model.safetensors + config.json), s3://bucket/prefix or models:/name@alias"
            )
        uri = str(path.resolve())
    directory = fetch(uri, cache_dir)
    try:
        _, config = load_checkpoint(directory)  # verifies the weights' sha256 against config.json
    except CheckpointError as exc:
        raise CheckpointError(f"init_from {init_from}: {exc}") from None
    check_architecture(config, params, init_from)
    return PinnedModel(
        init_from=init_from,
        uri=uri,
        sha256=str(config["sha256"]),
        stages=tuple(config.get("stages", ())),
        version=version,
    )


def materialize(pinned: PinnedModel, out_dir: str | Path, *, cache_dir: str | Path) -> Path:
    """Copy the pinned checkpoint into ``out_dir``, refusing weights that differ from the pinned sha256."""
    directory = fetch(pinned.uri, cache_dir)
    config = read_checkpoint_config(directory)
    if config.get("sha256") != pinned.sha256:
        raise CheckpointError(
            f"{pinned.init_from} changed since this run resolved it (sha256 {str(config.get('sha256'))[:12]} "
            f"!= {pinned.sha256[:12]}): run the pipeline again to start from the current one"
        )
    load_checkpoint(directory)  # the weights match their config's hash
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(directory / name, out / name)
    return out
