"""manifests/ingress: rendered by kustomize, every custom resource validated strictly against the
models generated from its CRD (Istio networking 1.24, cert-manager 1.17: ../shared/schemas has neither),
and the pieces agree with each other and with the serving configuration."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooling import require_tool

from serving.transformer_settings import TransformerSettings
from serving.validation import Limits

ROOT = Path(__file__).resolve().parents[2]
INGRESS = ROOT / "manifests" / "ingress"

pytest.importorskip("cloudcoil.models.istio", reason="pip install -e '.[dev]' (cloudcoil-models-istio)")
from cloudcoil.models.cert_manager import v1 as cert_manager_v1  # noqa: E402
from cloudcoil.models.istio.networking import v1 as istio_v1  # noqa: E402
from cloudcoil.models.istio.networking import v1alpha3 as istio_v1alpha3  # noqa: E402

MODELS: dict[tuple[str, str], Any] = {
    ("cert-manager.io/v1", "Issuer"): cert_manager_v1.Issuer,
    ("cert-manager.io/v1", "Certificate"): cert_manager_v1.Certificate,
    ("networking.istio.io/v1", "Gateway"): istio_v1.Gateway,
    ("networking.istio.io/v1", "VirtualService"): istio_v1.VirtualService,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): istio_v1alpha3.EnvoyFilter,
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(INGRESS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs) == 5, sorted(by_kind)
    return by_kind


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def test_every_resource_validates_strictly_against_its_crd_model(rendered: dict[str, dict[str, Any]]) -> None:
    for kind, doc in rendered.items():
        model = MODELS[(doc["apiVersion"], kind)]
        obj = model.model_validate(doc)  # types, enums, required fields
        # Strict: a field the CRD does not know would be dropped by the model, so the round trip differs.
        again = _drop_none(obj.model_dump(by_alias=True, exclude_unset=True, mode="json"))
        assert again == doc, f"{kind}: fields the CRD does not define, or wrong shapes"


def test_a_misspelt_field_is_caught(rendered: dict[str, dict[str, Any]]) -> None:
    doc = yaml.safe_load(yaml.safe_dump(rendered["Gateway"]))
    doc["spec"]["servers"][0]["tls"]["credentialname"] = doc["spec"]["servers"][0]["tls"].pop(
        "credentialName"
    )
    again = _drop_none(
        istio_v1.Gateway.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
    )
    assert again != doc
    doc = yaml.safe_load(yaml.safe_dump(rendered["Gateway"]))
    doc["spec"]["servers"][0]["tls"]["mode"] = "SIMPLEST"
    with pytest.raises(ValueError):
        istio_v1.Gateway.model_validate(doc)


def test_tls_https_redirect_and_one_host_everywhere(rendered: dict[str, dict[str, Any]]) -> None:
    cert, gw, vs, ef = (
        rendered["Certificate"],
        rendered["Gateway"],
        rendered["VirtualService"],
        rendered["EnvoyFilter"],
    )
    https, http = gw["spec"]["servers"]
    host = cert["spec"]["dnsNames"][0]
    assert https["port"]["protocol"] == "HTTPS" and https["tls"]["mode"] == "SIMPLE"
    # Istio reads credentialName from the gateway workload's namespace: the Secret must be issued there.
    assert https["tls"]["credentialName"] == cert["spec"]["secretName"]
    assert cert["metadata"]["namespace"] == gw["metadata"]["namespace"] == "istio-system"
    assert cert["spec"]["issuerRef"]["name"] == rendered["Issuer"]["metadata"]["name"]
    assert http["port"]["protocol"] == "HTTP" and http["tls"] == {"httpsRedirect": True}
    assert https["hosts"] == http["hosts"] == vs["spec"]["hosts"] == [host]
    assert vs["spec"]["gateways"] == [f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"]
    for patch in ef["spec"]["configPatches"]:
        assert patch["match"]["listener"]["filterChain"]["sni"] == host
    assert ef["spec"]["workloadSelector"]["labels"] == gw["spec"]["selector"]


def test_route_reaches_the_inference_service_with_the_service_timeout(
    rendered: dict[str, dict[str, Any]],
) -> None:
    route = next(r for r in rendered["VirtualService"]["spec"]["http"] if r["name"] == "hndsr")
    assert int(route["timeout"].removesuffix("s")) >= math.ceil(TransformerSettings().timeout_s)
    assert route["retries"]["attempts"] <= 1 and "5xx" not in route["retries"]["retryOn"]
    isvc_path = ROOT / "manifests" / "base" / "inferenceservice.yaml"
    if isvc_path.is_file():  # the InferenceService's cluster-local host, as Knative names it
        isvc = yaml.safe_load(isvc_path.read_text())
        base = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())
        namespace = isvc["metadata"].get("namespace") or base.get("namespace", "default")
        assert route["rewrite"]["authority"] == f"{isvc['metadata']['name']}.{namespace}.svc.cluster.local"


def test_envoy_filters_limit_rate_and_body_like_the_service(rendered: dict[str, dict[str, Any]]) -> None:
    patches = rendered["EnvoyFilter"]["spec"]["configPatches"]
    filters = {p["patch"]["value"]["name"]: p["patch"]["value"]["typed_config"] for p in patches}
    assert list(filters) == ["envoy.filters.http.local_ratelimit", "envoy.filters.http.buffer"]  # limit first
    for p in patches:
        assert p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "INSERT_BEFORE"
        assert (
            p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            == "envoy.filters.http.router"
        )

    buffer = filters["envoy.filters.http.buffer"]
    assert buffer["@type"] == "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
    assert buffer["max_request_bytes"] == Limits().max_body_bytes

    limit = filters["envoy.filters.http.local_ratelimit"]
    assert (
        limit["@type"]
        == "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
    )
    bucket = limit["token_bucket"]
    assert bucket["max_tokens"] >= bucket["tokens_per_fill"] > 0 and bucket["fill_interval"] == "1s"
    for switch in ("filter_enabled", "filter_enforced"):  # on and enforced, not shadow mode
        assert limit[switch]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    headers = {h["header"]["key"].lower(): h["header"]["value"] for h in limit["response_headers_to_add"]}
    assert int(headers["retry-after"]) >= 1
