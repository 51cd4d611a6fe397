"""Helpers of the manifest tests: render kustomizations with the real kubectl, validate core kinds with
kubernetes-validate and custom resources against the CRD schemas: $HNDSR_CRD_SCHEMAS when set, else
.crd-schemas (what scripts/fetch-crd-schemas.sh fetches from the pinned releases: GitHub CI) or
../shared/schemas (this workplace's copy of the same files)."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from tooling import find_tool, needs_tool, require_path, require_tool

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
FETCH_SCHEMAS = "bash scripts/fetch-crd-schemas.sh"


def _schemas() -> Path:
    if os.environ.get("HNDSR_CRD_SCHEMAS"):
        return Path(os.environ["HNDSR_CRD_SCHEMAS"])
    fetched, shared = ROOT / ".crd-schemas", ROOT.parent / "shared" / "schemas"
    return shared if shared.is_dir() and not fetched.is_dir() else fetched


SCHEMAS = _schemas()
KUBECTL = find_tool("kubectl")

# Custom resources, by (group, kind) -> CRD file under SCHEMAS.
CRD_FILES = {
    ("serving.kserve.io", "InferenceService"): "kserve/serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io", "ServingRuntime"): "kserve/serving.kserve.io_servingruntimes.yaml",
    ("serving.kserve.io", "ClusterServingRuntime"): "kserve/serving.kserve.io_clusterservingruntimes.yaml",
    (
        "monitoring.coreos.com",
        "PrometheusRule",
    ): "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
    (
        "monitoring.coreos.com",
        "ServiceMonitor",
    ): "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
    (
        "monitoring.coreos.com",
        "AlertmanagerConfig",
    ): "prometheus-operator/monitoring.coreos.com_alertmanagerconfigs.yaml",
}
# Custom resources of other engineers' kustomizations whose CRDs are not among those schemas: only
# their envelope is checked. A kind in neither table fails the tests (decide, then list it).
CRDS_WITHOUT_SCHEMA = {
    ("cert-manager.io", "Certificate"),
    ("cert-manager.io", "Issuer"),
    ("cert-manager.io", "ClusterIssuer"),
    ("networking.istio.io", "Gateway"),
    ("networking.istio.io", "VirtualService"),
    ("networking.istio.io", "DestinationRule"),
    ("networking.istio.io", "EnvoyFilter"),
    ("kubeflow.org", "PyTorchJob"),
}

# libyaml when present: the KServe CRD is megabytes of YAML.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """YAML 1.1 reads a bare ``=`` (the AlertmanagerConfig CRD's matchType enum) as the 'value' tag."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))

needs_kubectl = needs_tool("kubectl")


def kustomizations() -> list[Path]:
    """Every kustomization directory under manifests/ (base, overlays, other engineers' directories)."""
    return sorted(
        p.parent for p in MANIFESTS.rglob("kustomization.yaml") if not p.parent.name.startswith(".render")
    )


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return load_all(out.stdout)


def load_all(text: str) -> tuple[dict[str, Any], ...]:
    """The documents of kubectl's output (with the loader that reads a bare ``=`` as a string)."""
    return tuple(d for d in yaml.load_all(text, Loader=_Loader) if d)


def group_of(doc: dict[str, Any]) -> str:
    api = str(doc["apiVersion"])
    return api.split("/")[0] if "/" in api else ""


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def schema_file(name: str) -> Path:
    """A CRD file of the schema folder, or skip/fail by the one policy (tests/tooling.py)."""
    return require_path(SCHEMAS / name, "CRD schema", FETCH_SCHEMAS)


@functools.cache
def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    crd = yaml.load(schema_file(CRD_FILES[(group, kind)]).read_text(), Loader=_Loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{kind}: no version {version} in its CRD")


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the schema does not name, where it does not say to keep unknown fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                yield from unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                yield f"{path}.{key}"
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            yield from unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def validate_custom_resource(doc: dict[str, Any]) -> None:
    group, kind = group_of(doc), doc["kind"]
    version = str(doc["apiVersion"]).split("/")[-1]
    schema = crd_schema(group, kind, version)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    assert error is None, f"{kind}/{doc['metadata']['name']}: {error.message} at {list(error.absolute_path)}"
    extra = list(unknown_fields(doc, schema))
    assert not extra, f"{kind}/{doc['metadata']['name']}: fields not in the CRD schema: {extra}"


def pod_containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod-level spec) of every container a resource runs."""
    kind, spec = doc["kind"], doc.get("spec", {})
    pods: list[tuple[str, dict[str, Any]]] = []
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        pods.append(("template", spec["template"]["spec"]))
    elif kind == "CronJob":
        pods.append(("jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"]))
    elif kind == "ServingRuntime":
        pods.append(("runtime", spec))
    elif kind == "InferenceService":
        for component in ("predictor", "transformer"):
            if component in spec:
                pods.append((component, spec[component]))
    out = []
    for where, pod in pods:
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            out.append((f"{kind}/{doc['metadata']['name']} {where} {container['name']}", container, pod))
    return out
