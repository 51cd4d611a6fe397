"""Every kustomization under manifests/ renders with the real kubectl; core kinds validate strictly
(kubernetes-validate), custom resources against their CRD schemas; the platform's rules hold
(security, probes, images, autoscaling, canary, network policies, no secret values)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kube_render import (
    CRD_FILES,
    CRDS_WITHOUT_SCHEMA,
    MANIFESTS,
    ROOT,
    find,
    group_of,
    kustomizations,
    load_all,
    needs_kubectl,
    pod_containers,
    render,
    schema_file,
    validate_custom_resource,
)

import hndsr
from deploy.image_tags import IMAGE_KINDS, image_ref

pytestmark = needs_kubectl

KUBERNETES_VERSION = "1.32"
OVERLAYS = {name: MANIFESTS / "overlays" / name for name in ("dev", "staging", "prod")}
APP = [MANIFESTS / "base", *OVERLAYS.values()]  # the kustomizations of this platform's workloads
ALL = kustomizations()


def _id(path: Path) -> str:
    return str(path.relative_to(MANIFESTS))


def test_every_overlay_and_the_base_are_found() -> None:
    assert set(APP) <= set(ALL), f"missing kustomizations: {set(APP) - set(ALL)}"


@pytest.mark.parametrize("directory", ALL, ids=_id)
def test_renders_and_validates(directory: Path) -> None:
    """Every object is checked whatever its place in the output: the schemas the custom resources need
    are required before the loop (the one policy), and each object's problem is collected, not raised."""
    docs = render(directory)
    assert docs, f"{directory} renders nothing"
    for key in sorted({(group_of(d), d["kind"]) for d in docs} & set(CRD_FILES)):
        schema_file(CRD_FILES[key])
    problems = []
    for doc in docs:
        key = (group_of(doc), doc["kind"])
        name = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_FILES:
            try:
                validate_custom_resource(doc)
            except AssertionError as exc:
                problems.append(str(exc))
        elif key in CRDS_WITHOUT_SCHEMA:
            if not (doc["metadata"]["name"] and str(doc["apiVersion"]).count("/") == 1):
                problems.append(f"{name}: no name or no versioned apiVersion")
        elif "." in key[0] and not key[0].endswith("k8s.io"):
            problems.append(f"{name}: custom resource with no schema decision (add it to kube_render.py)")
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name}: {exc.message} at {list(exc.caught.absolute_path)}")
    assert not problems, f"{_id(directory)}:\n" + "\n".join(problems)


def test_every_object_of_every_kustomization_is_checked() -> None:
    """The loop above reaches every object: each rendered object's kind is decided (schema, envelope
    or kubernetes-validate), so nothing after a custom resource goes unchecked."""
    kinds = {(group_of(d), d["kind"]) for directory in ALL for d in render(directory)}
    custom = {k for k in kinds if "." in k[0] and not k[0].endswith("k8s.io")}
    assert custom <= set(CRD_FILES) | CRDS_WITHOUT_SCHEMA, custom - set(CRD_FILES) - CRDS_WITHOUT_SCHEMA
    assert ("networking.k8s.io", "NetworkPolicy") in kinds and (
        "monitoring.coreos.com",
        "PodMonitor",
    ) in kinds


@pytest.mark.parametrize("directory", APP, ids=_id)
def test_every_container_is_locked_down(directory: Path) -> None:
    problems = []
    for doc in render(directory):
        for where, container, pod in pod_containers(doc):
            csc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
            if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot not set")
            if 0 in (csc.get("runAsUser"), psc.get("runAsUser")):
                problems.append(f"{where}: runs as uid 0")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem not read-only")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation not disabled")
            if csc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(bound, {})):
                    problems.append(f"{where}: no cpu/memory {bound}")
            # Servers get both probes; batch jobs end by themselves (activeDeadlineSeconds bounds them).
            if doc["kind"] not in ("Job", "CronJob"):
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        problems.append(f"{where}: no {probe}")
        if doc["kind"] == "InferenceService":
            # The model container is the ServingRuntime's, checked above; Knative takes only
            # seccompProfile at pod level.
            predictor = doc["spec"]["predictor"]
            assert find(render(directory), "ServingRuntime", predictor["model"]["runtime"])
            assert "containers" not in predictor
            for component in ("predictor", "transformer"):
                assert set(doc["spec"][component]["securityContext"]) == {"seccompProfile"}
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", APP, ids=_id)
def test_no_secret_values_in_the_repository(directory: Path) -> None:
    docs = render(directory)
    assert not find(docs, "Secret"), "Secrets are created out of band (README: Kubernetes), never committed"


def test_image_tags_agree_with_the_package_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == hndsr.__version__
    ours = {f"hndsr/hndsr-{kind}": image_ref(kind, registry="hndsr") for kind in IMAGE_KINDS}
    seen = set()
    for directory in APP:
        for doc in render(directory):
            for where, container, _ in pod_containers(doc):
                name = container["image"].rsplit(":", 1)[0]
                if name in ours:
                    assert container["image"] == ours[name], f"{where}: {container['image']} != {ours[name]}"
                    seen.add(name)
                else:  # third-party images are pinned to an exact version
                    tag = container["image"].rsplit(":", 1)[-1]
                    assert any(c.isdigit() for c in tag) and "latest" not in tag, f"{where}: unpinned {tag}"
    assert seen == set(ours), f"images never used in manifests: {set(ours) - seen}"


def test_component_base_images_are_the_training_image() -> None:
    kfp = pytest.importorskip("kfp", reason="kfp (pipeline extra) not installed")
    components = pytest.importorskip("components.training_components", reason="components/ not present")
    images = {
        name: obj.component_spec.implementation.container.image
        for name, obj in vars(components).items()
        if isinstance(obj, kfp.dsl.base_component.BaseComponent)
    }
    assert images, "no KFP components found in components.training_components"
    assert set(images.values()) == {image_ref("train")}, images


def _isvc(overlay: str) -> dict[str, Any]:
    (isvc,) = find(render(OVERLAYS[overlay]), "InferenceService", "hndsr")
    return isvc


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_production_shape_gpu_autoscaling_storage(overlay: str) -> None:
    isvc = _isvc(overlay)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["model"]["storageUri"].startswith("s3://")
    assert predictor["serviceAccountName"] == "hndsr-predictor"
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        assert spec["minReplicas"] == 2 and spec["maxReplicas"] >= 4
        assert spec["scaleMetric"] == "concurrency" and spec["scaleTarget"] > 0
    (sa,) = find(render(OVERLAYS[overlay]), "ServiceAccount", "hndsr-predictor")
    assert sa["secrets"] == [{"name": "hndsr-s3-credentials"}]


def test_base_autoscales_from_2_to_8() -> None:
    (isvc,) = find(render(MANIFESTS / "base"), "InferenceService", "hndsr")
    for component in ("predictor", "transformer"):
        assert (isvc["spec"][component]["minReplicas"], isvc["spec"][component]["maxReplicas"]) == (2, 8)


def test_prod_rolls_out_as_a_canary_and_others_do_not() -> None:
    assert _isvc("prod")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in _isvc("staging")["spec"]["predictor"]
    assert "canaryTrafficPercent" not in _isvc("dev")["spec"]["predictor"]


def test_dev_is_cpu_single_replica_with_an_in_cluster_minio() -> None:
    docs = render(OVERLAYS["dev"])
    isvc = _isvc("dev")
    for component in ("predictor", "transformer"):
        assert isvc["spec"][component]["minReplicas"] == isvc["spec"][component]["maxReplicas"] == 1
    for _, container, _ in pod_containers(isvc) + [
        c for d in find(docs, "Deployment") for c in pod_containers(d)
    ]:
        for bound in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container.get("resources", {}).get(bound, {})
    assert "--device" in isvc["spec"]["predictor"]["model"]["args"]
    assert find(docs, "Deployment", "minio") and find(docs, "Service", "minio")
    (lake,) = find(docs, "ConfigMap", "hndsr-lake")
    assert lake["data"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {"hndsr-dev"}


@pytest.mark.parametrize("overlay", ["dev", "staging", "prod"])
def test_the_deployer_binding_follows_the_namespace(overlay: str) -> None:
    docs = render(OVERLAYS[overlay])
    (binding,) = find(docs, "RoleBinding", "hndsr-deployer")
    assert binding["subjects"][0]["namespace"] == binding["metadata"]["namespace"]


def test_disruption_budgets_select_the_serving_pods() -> None:
    docs = render(MANIFESTS / "base")
    budgets = {d["metadata"]["name"]: d["spec"] for d in find(docs, "PodDisruptionBudget")}
    assert budgets["hndsr-predictor"]["minAvailable"] == 1
    assert budgets["hndsr-predictor"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "hndsr",
        "component": "predictor",
    }
    assert budgets["hndsr-transformer"]["selector"]["matchLabels"]["component"] == "transformer"
    (worker,) = find(docs, "Deployment", "hndsr-worker")
    assert budgets["hndsr-worker"]["selector"]["matchLabels"].items() <= (
        worker["spec"]["template"]["metadata"]["labels"].items()
    )


def test_network_policies_isolate_predictor_and_redis() -> None:
    docs = render(MANIFESTS / "base")
    policies = find(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "no default-deny ingress policy"

    def peers_in_namespace(selected: dict[str, str]) -> list[dict[str, str]]:
        """Pod selectors (this namespace) of every policy that selects pods with these labels."""
        found = []
        for policy in policies:
            match = policy["spec"]["podSelector"].get("matchLabels")
            if match and match.items() <= selected.items():
                for rule in policy["spec"].get("ingress", []):
                    for peer in rule.get("from", []):
                        if "podSelector" in peer and "namespaceSelector" not in peer:
                            found.append(peer["podSelector"]["matchLabels"])
        return found

    predictor = {"serving.kserve.io/inferenceservice": "hndsr", "component": "predictor"}
    assert [p["component"] for p in peers_in_namespace(predictor)] == ["transformer"]
    (redis,) = find(docs, "StatefulSet", "hndsr-redis")
    redis_peers = peers_in_namespace(redis["spec"]["template"]["metadata"]["labels"])
    assert {p.get("app.kubernetes.io/name") or p.get("component") for p in redis_peers} == {
        "hndsr-worker",
        "transformer",
    }


def test_redis_keeps_its_data_on_a_10gi_volume() -> None:
    (redis,) = find(render(MANIFESTS / "base"), "StatefulSet", "hndsr-redis")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    mounts = redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts


def test_monitors_scrape_metrics_and_drift_pushes_to_the_pushgateway() -> None:
    docs = render(MANIFESTS / "base")
    monitors = {d["metadata"]["name"]: d["spec"] for d in find(docs, "PodMonitor")}
    assert monitors["hndsr-serving"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    # The hndsr_* metrics' own revision and model_version win over the pod's (serving.metrics).
    assert monitors["hndsr-serving"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert monitors["hndsr-serving"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "hndsr"
    }
    (gateway,) = find(docs, "Service", "pushgateway")
    (cron,) = find(docs, "CronJob", "hndsr-drift")
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    port = gateway["spec"]["ports"][0]["port"]
    assert args[args.index("--pushgateway") + 1] == f"http://{gateway['metadata']['name']}:{port}"


def test_prometheus_rule_is_the_rendering_of_the_monitoring_rules() -> None:
    from deploy.cli import RULES_MANIFEST, RULES_SOURCE, prometheus_rule_manifest

    source = ROOT / RULES_SOURCE
    expected = prometheus_rule_manifest(source.read_text(), RULES_SOURCE.as_posix())
    assert (ROOT / RULES_MANIFEST).read_text() == expected, "run `hndsr manifests render-rules`"
    (rule,) = find(render(MANIFESTS / "base"), "PrometheusRule", "hndsr-alerts")
    alerts = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert alerts and len(alerts) == len(set(alerts))


def test_render_rules_check_fails_when_out_of_date(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hndsr_cli import app

    source = tmp_path / "rules.yml"
    source.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n")
    out = tmp_path / "rule.yaml"
    runner = CliRunner()
    args = ["manifests", "render-rules", "--source", str(source), "--out", str(out)]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    source.write_text(source.read_text().replace("up == 0", "up == 1"))
    stale = runner.invoke(app, [*args, "--check"])
    assert stale.exit_code == 1 and "out of date" in stale.output
    source.write_text("rules: []\n")
    bad = runner.invoke(app, args)
    assert bad.exit_code == 2 and "groups" in bad.output


def test_render_script_retags_every_project_image() -> None:
    out = subprocess.run(
        [
            str(MANIFESTS / "render.sh"),
            str(MANIFESTS / "overlays" / "prod"),
            "registry.example/team",
            "abc123",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    images = {c["image"] for d in load_all(out.stdout) for _, c, _ in pod_containers(d)}
    ours = {i for i in images if "/hndsr-" in i}
    assert ours == {f"registry.example/team/hndsr-{kind}:abc123" for kind in IMAGE_KINDS}
    assert not list(MANIFESTS.glob(".render.*")), "render.sh left its work directory behind"
