"""scripts/fetch-crd-schemas.sh (what GitHub CI runs to get the CRD schemas) on release artifacts laid
out as GitHub serves them, offline (file://): each CRD the tests use comes out unchanged, in the
layout kube_render.py reads, and the schemas found are the ones the tests validate against."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kube_render import CRD_FILES, ROOT, crd_schema, load_all, schema_file

SCRIPT = ROOT / "scripts" / "fetch-crd-schemas.sh"
OTHER = "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: controller\n  namespace: x\n"


def _release(root: Path, repo: str, version: str, asset: str, files: list[str]) -> None:
    out = root / repo / "releases" / "download" / version / asset
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(OTHER + "".join(schema_file(f).read_text() for f in files) + OTHER)


def _fetch_env(tmp_path: Path, *, kserve: str, operator: str) -> dict[str, str]:
    """The fetch script's environment: releases from ``tmp_path/gh``, schemas into ``tmp_path/out``."""
    return os.environ | {
        "CRD_RELEASE_BASE": f"file://{tmp_path / 'gh'}",
        "HNDSR_CRD_SCHEMAS": str(tmp_path / "out"),
        "KSERVE_VERSION": kserve,
        "PROMETHEUS_OPERATOR_VERSION": operator,
    }


def test_fetch_splits_the_release_artifacts_into_the_tests_layout(tmp_path: Path) -> None:
    files = sorted(CRD_FILES.values())
    kserve = [f for f in files if f.startswith("kserve/")]
    _release(tmp_path / "gh", "kserve/kserve", "v9.9.9", "kserve.yaml", kserve)
    operator = [f for f in files if f.startswith("prometheus-operator/")]
    _release(tmp_path / "gh", "prometheus-operator/prometheus-operator", "v8.8.8", "bundle.yaml", operator)
    env = _fetch_env(tmp_path, kserve="v9.9.9", operator="v8.8.8")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for f in files:
        assert load_all((tmp_path / "out" / f).read_text()) == load_all(schema_file(f).read_text()), f
    again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "CRD schemas: " in again.stdout  # already there: nothing fetched


def test_fetch_fails_when_a_release_lacks_a_crd(tmp_path: Path) -> None:
    _release(tmp_path / "gh", "kserve/kserve", "v1", "kserve.yaml", [])
    _release(tmp_path / "gh", "prometheus-operator/prometheus-operator", "v1", "bundle.yaml", [])
    env = _fetch_env(tmp_path, kserve="v1", operator="v1")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "do not hold" in run.stderr


def test_every_custom_resource_kind_has_its_schema() -> None:
    for (group, kind), f in CRD_FILES.items():
        crd = load_all(schema_file(f).read_text())[0]
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind, f
        for version in crd["spec"]["versions"]:
            assert crd_schema(group, kind, version["name"])["type"] == "object"
