"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (constructor arguments, package
version, the weights' sha256, training provenance).

Loading verifies the hash before touching the weights. A missing file, a hash mismatch or a config
that does not fit the weights is a :class:`CheckpointError` that says what to do — never a silent
fallback to bicubic.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from hndsr import __version__
from hndsr.errors import CheckpointError
from hndsr.files import sha256_file
from hndsr.models.hndsr_model import HNDSR

logger = logging.getLogger(__name__)

FORMAT = "hndsr-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def release_checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package (``hndsr/release``)."""
    return Path(str(resources.files("hndsr") / "release"))


def save_checkpoint(
    model: HNDSR,
    directory: str | Path,
    *,
    stages: list[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write weights and config atomically (temp files + rename), returning the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        tmp_weights = Path(tmp.name)
    save_file(state, str(tmp_weights), metadata={"format": FORMAT})
    tmp_weights.chmod(0o644)  # NamedTemporaryFile creates 0600; a checkpoint is meant to be shared
    digest = sha256_file(tmp_weights)
    config = {
        "format": FORMAT,
        "package_version": __version__,
        "model_config": model.config,
        "sha256": digest,
        "stages": stages,
        "metadata": metadata or {},
    }
    tmp_config = directory / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)
    logger.info("saved checkpoint %s (sha256 %s, stages %s)", directory, digest[:12], stages)
    return directory


def checkpoint_version(config: dict[str, Any]) -> str:
    """The model version a checkpoint config names: its metadata's ``version``, else
    ``<package version>+<first 12 hex of the weights' sha256>`` (what servers and Items report)."""
    meta = config.get("metadata") or {}
    sha = str(config.get("sha256") or "")
    return str(meta.get("version") or f"{config.get('package_version', '?')}+{sha[:12]}")


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.exists():
        raise CheckpointError(
            f"checkpoint directory {directory} does not exist: train one with `hndsr train --stage all "
            "--out DIR`, or omit --checkpoint to use the release checkpoint"
        )
    if not config_path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {CONFIG_FILE}: copy the whole checkpoint directory "
            f"({WEIGHTS_FILE} + {CONFIG_FILE}), or re-run `hndsr train`"
        )
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint config {config_path} is unreadable ({exc}): re-run `hndsr train`"
        ) from exc
    if config.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {directory} has format {config.get('format')!r}, this hndsr reads {FORMAT!r}"
        )
    return config


def load_checkpoint(directory: str | Path, *, map_location: str = "cpu") -> tuple[HNDSR, dict[str, Any]]:
    """Verify and load a checkpoint directory -> (model in eval mode, its config.json)."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {WEIGHTS_FILE}: copy the whole checkpoint directory, "
            "or re-run `hndsr train`"
        )
    actual = sha256_file(weights)
    expected = config.get("sha256")
    if actual != expected:
        raise CheckpointError(
            f"checkpoint sha256 mismatch for {weights}: expected {expected}, got {actual}; the file is "
            "corrupt or was replaced — restore it from the registry or re-run `hndsr train`"
        )
    try:
        model = HNDSR(**config["model_config"])
        state = load_file(str(weights), device=map_location)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {directory} does not fit this model definition ({exc}); it was written by "
            f"hndsr {config.get('package_version')}, this is {__version__}: use a matching hndsr version"
        ) from exc
    model.eval()
    return model, config


def load_release_checkpoint(map_location: str = "cpu") -> tuple[HNDSR, dict[str, Any]]:
    directory = release_checkpoint_dir()
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"the release checkpoint is missing from this installation ({directory}): reinstall hndsr, "
            "or pass --checkpoint DIR"
        )
    return load_checkpoint(directory, map_location=map_location)
