import json

import pytest
import torch

from hndsr import __version__
from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from hndsr.errors import CheckpointError
from hndsr.models.hndsr_model import HNDSR


def test_round_trip_keeps_weights_config_and_version(tmp_path, tiny_model_config) -> None:
    model = HNDSR(**tiny_model_config)
    model.residual_std.fill_(0.3)
    save_checkpoint(model, tmp_path, stages=["autoencoder"], metadata={"note": "x"})
    loaded, cfg = load_checkpoint(tmp_path)
    assert cfg["package_version"] == __version__
    assert cfg["stages"] == ["autoencoder"] and cfg["metadata"]["note"] == "x"
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_tampered_weights_are_refused(tmp_path, tiny_model_config) -> None:
    save_checkpoint(HNDSR(**tiny_model_config), tmp_path, stages=["autoencoder"])
    data = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 mismatch .* re-run `hndsr train`"):
        load_checkpoint(tmp_path)


def test_missing_files_say_what_to_do(tmp_path, tiny_model_config) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(HNDSR(**tiny_model_config), tmp_path, stages=[])
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_checkpoint(tmp_path)


def test_config_that_does_not_fit_the_weights(tmp_path, tiny_model_config) -> None:
    save_checkpoint(HNDSR(**tiny_model_config), tmp_path, stages=[])
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["model_config"]["operator"]["width"] = 32
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path)


def test_release_checkpoint_loads_and_verifies() -> None:
    from hndsr.checkpoint import load_release_checkpoint, release_checkpoint_dir

    if not (release_checkpoint_dir() / CONFIG_FILE).is_file():
        pytest.fail("the release checkpoint must ship inside the package (hndsr/release)")
    model, cfg = load_release_checkpoint()
    assert cfg["stages"][:2] == ["autoencoder", "operator"]
    assert (release_checkpoint_dir() / WEIGHTS_FILE).stat().st_size < 25 * 1024 * 1024
    assert isinstance(model, HNDSR)
