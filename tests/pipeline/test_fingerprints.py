"""The identities that key the local task cache change exactly when the data or the code change."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import runner


def test_data_fingerprint_follows_content_not_timestamps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.png"
    image.write_bytes(b"one")
    first = runner.data_fingerprint(str(tmp_path))
    image.write_bytes(b"one")  # rewritten, same bytes (as `hndsr data sample` does)
    assert runner.data_fingerprint(str(tmp_path)) == first
    image.write_bytes(b"two")
    assert runner.data_fingerprint(str(tmp_path)) != first
    image.rename(tmp_path / "a" / "y.png")
    assert runner.data_fingerprint(str(tmp_path)) not in (first,)


def test_code_fingerprint_covers_the_steps_but_not_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "hndsr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "training.py").write_text("STEPS = 1\n")
    (pkg / "cli_extra.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "CODE_PACKAGES", ("hndsr",))
    monkeypatch.delitem(__import__("sys").modules, "hndsr", raising=False)
    first = runner.code_fingerprint()
    (pkg / "cli_extra.py").write_text("X = 2\n")
    assert runner.code_fingerprint() == first
    (pkg / "training.py").write_text("STEPS = 2\n")
    assert runner.code_fingerprint() != first
