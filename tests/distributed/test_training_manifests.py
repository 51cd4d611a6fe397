"""manifests/training: rendered by the real kubectl kustomize; core parts validated by kubernetes-validate,
the PyTorchJob (no CRD schema in ../shared/schemas) by a structural check of the operator's fields;
the pipeline's launcher builds the same job and reports the operator's outcome."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kube_render import render as rendered_once
from tooling import needs_tool

from components.pytorchjob import (
    CLAIM,
    JobSpec,
    PyTorchJobFailed,
    cli_args,
    job_outcome,
    pytorchjob_manifest,
    run_pytorchjob,
    train_stage_as_pytorchjob,
)
from deploy.image_tags import image_ref
from hndsr.errors import InputError

TRAINING = Path(__file__).parents[2] / "manifests" / "training"
STAGES = ("autoencoder", "operator", "diffusion")
KUBERNETES_VERSION = "1.32"
pytestmark = needs_tool("kubectl")

# kubeflow.org/v1 PyTorchJobSpec and ReplicaSpec fields (training-operator's API types).
JOB_SPEC_FIELDS = {"runPolicy", "elasticPolicy", "nprocPerNode", "pytorchReplicaSpecs"}
RUN_POLICY_FIELDS = {
    "cleanPodPolicy",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "schedulingPolicy",
    "suspend",
    "managedBy",
}
REPLICA_FIELDS = {"replicas", "template", "restartPolicy"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}
CLEAN_POD_POLICIES = {"All", "Running", "None"}


def render(directory: Path) -> list[dict[str, Any]]:
    """A copy of kustomize's documents: the tests here edit them, and kube_render caches them."""
    return copy.deepcopy(list(rendered_once(directory)))


def _job(stage: str) -> dict[str, Any]:
    (doc,) = render(TRAINING / stage)
    return doc


def check_pytorchjob(doc: dict[str, Any]) -> list[str]:
    """Problems with a PyTorchJob the operator would reject or run wrongly (empty = fine)."""
    problems = []
    if (doc.get("apiVersion"), doc.get("kind")) != ("kubeflow.org/v1", "PyTorchJob"):
        problems.append(f"not a kubeflow.org/v1 PyTorchJob: {doc.get('apiVersion')} {doc.get('kind')}")
    spec = doc.get("spec", {})
    problems += [f"unknown spec field {k}" for k in set(spec) - JOB_SPEC_FIELDS]
    problems += [f"unknown runPolicy field {k}" for k in set(spec.get("runPolicy", {})) - RUN_POLICY_FIELDS]
    if spec.get("runPolicy", {}).get("cleanPodPolicy", "None") not in CLEAN_POD_POLICIES:
        problems.append("runPolicy.cleanPodPolicy must be All, Running or None")
    nproc = spec.get("nprocPerNode")
    if not isinstance(nproc, str):
        problems.append("nprocPerNode must be a string (an int or 'auto')")
    replicas = spec.get("pytorchReplicaSpecs", {})
    if set(replicas) - {"Master", "Worker"} or "Master" not in replicas:
        problems.append(f"pytorchReplicaSpecs must be Master (+ Worker), got {sorted(replicas)}")
    if replicas.get("Master", {}).get("replicas") != 1:
        problems.append("exactly one Master replica")
    for role, replica in replicas.items():
        problems += [f"{role}: unknown field {k}" for k in set(replica) - REPLICA_FIELDS]
        if replica.get("restartPolicy") not in RESTART_POLICIES:
            problems.append(f"{role}: restartPolicy must be one of {sorted(RESTART_POLICIES)}")
        if not isinstance(replica.get("replicas"), int) or replica["replicas"] < 1:
            problems.append(f"{role}: replicas must be a positive integer")
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}}
        try:  # the pod template is a core object: validate it as one
            kubernetes_validate.validate(
                pod | {"template": replica["template"]}, KUBERNETES_VERSION, strict=True
            )
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{role} template: {exc.message} at {list(exc.caught.absolute_path)}")
        containers = {c["name"]: c for c in replica["template"]["spec"]["containers"]}
        if "pytorch" not in containers:
            problems.append(f"{role}: the operator needs a container named 'pytorch'")
            continue
        main = containers["pytorch"]
        if not any(p.get("name") == "pytorchjob-port" for p in main.get("ports", [])):
            problems.append(f"{role}: no port named pytorchjob-port")
        gpus = main.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if isinstance(nproc, str) and nproc.isdigit() and gpus != nproc:
            problems.append(f"{role}: {gpus} GPUs for {nproc} processes per node")
    return problems


def test_the_shared_parts_render_and_validate_as_core_objects() -> None:
    docs = render(TRAINING)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("PersistentVolumeClaim", CLAIM),
        ("Role", "hndsr-pytorchjob-launcher"),
        ("RoleBinding", "hndsr-pytorchjob-launcher"),
    }
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod of the job mounts it


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_a_valid_pytorchjob_on_the_package_image(stage: str) -> None:
    job = _job(stage)
    assert check_pytorchjob(job) == []
    assert job["metadata"]["name"] == f"hndsr-train-{stage}"
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["image"] == image_ref("train")
        assert container["command"] == ["torchrun"]
        assert {"name": "HNDSR_STAGE", "value": stage} in container["env"]
        args = container["args"]
        assert args[args.index("-m") + 1 : args.index("-m") + 5] == [
            "hndsr_cli",
            "train",
            "--stage",
            "$(HNDSR_STAGE)",
        ]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
            for v in replica["template"]["spec"]["volumes"]
        }
        assert claims[next(n for n, p in mounts.items() if p == "/mnt/hndsr")] == CLAIM
        assert args[args.index("--out") + 1].startswith("/mnt/hndsr/")


def test_the_structural_check_catches_what_the_operator_rejects() -> None:
    job = _job("operator")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    job["spec"]["nprocPerNode"] = 2
    problems = "\n".join(check_pytorchjob(job))
    assert "named 'pytorch'" in problems and "restartPolicy" in problems and "nprocPerNode" in problems


def test_kustomize_images_retags_the_job(tmp_path: Path) -> None:
    overlay = tmp_path / "retag"
    overlay.mkdir()
    relative = Path("../" * len(overlay.parts[1:])) / str(TRAINING / "operator").lstrip("/")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(relative)],
                "images": [
                    {"name": "hndsr/hndsr-train", "newName": "registry.test/hndsr-train", "newTag": "abc"}
                ],
            }
        )
    )
    (job,) = render(overlay)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == "registry.test/hndsr-train:abc"


@pytest.mark.parametrize("stage", STAGES)
def test_the_launcher_builds_the_rendered_job(stage: str) -> None:
    assert pytorchjob_manifest(JobSpec(stage=stage)) == _job(stage)


class FakeCustomObjects:
    """An in-memory stand-in for the API server (none can run here): the operator's conditions in turn."""

    def __init__(self, conditions: list[list[dict[str, str]]]) -> None:
        self.conditions = conditions
        self.created: list[dict[str, Any]] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):  # type: ignore[no-untyped-def]
        assert (group, version, plural, namespace) == (
            "kubeflow.org",
            "v1",
            "pytorchjobs",
            body["metadata"]["namespace"],
        )
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):  # type: ignore[no-untyped-def]
        assert name == self.created[-1]["metadata"]["name"]
        return self.created[-1] | {"status": {"conditions": self.conditions.pop(0)}}


RUNNING = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]


def test_the_launcher_waits_for_success() -> None:
    api = FakeCustomObjects(
        [[], RUNNING, [*RUNNING, {"type": "Succeeded", "status": "True", "message": "done"}]]
    )
    job = run_pytorchjob(JobSpec(stage="autoencoder"), api=api, poll_s=0)
    assert job_outcome(job) == ("Succeeded", "done")
    assert not api.conditions


def test_a_failed_job_fails_the_step_with_the_operators_message() -> None:
    failed = {
        "type": "Failed",
        "status": "True",
        "message": "PyTorchJob hndsr-train-operator has failed because 1 Worker replica(s) failed.",
    }
    api = FakeCustomObjects([RUNNING, [*RUNNING, failed]])
    with pytest.raises(
        PyTorchJobFailed, match=r"stage operator\) failed: .*1 Worker replica\(s\) failed.*resumes"
    ):
        run_pytorchjob(JobSpec(stage="operator"), api=api, poll_s=0)


def test_staging_on_the_shared_volume(tmp_path: Path, image_dir: Path) -> None:
    mount = tmp_path / "volume"
    with pytest.raises(InputError, match="needs the hndsr-training volume mounted"):
        train_stage_as_pytorchjob("autoencoder", image_dir, params_text="x", run_id="r1", mount=mount)
    mount.mkdir()
    api = FakeCustomObjects([[{"type": "Succeeded", "status": "True"}]])
    run = train_stage_as_pytorchjob(
        "autoencoder", image_dir, params_text="train: {}\n", run_id="r1", mount=mount, api=api, nodes=3
    )
    assert run == mount / "runs" / "r1"
    assert (run / "params.yaml").read_text() == "train: {}\n"
    assert sorted(p.name for p in (run / "data").iterdir()) == sorted(p.name for p in image_dir.iterdir())
    (job,) = api.created
    assert check_pytorchjob(job) == []
    assert job["metadata"]["name"] == "hndsr-r1-autoencoder"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--out") + 1] == "/mnt/hndsr/runs/r1"
    assert args[args.index("--params") + 1] == "/mnt/hndsr/runs/r1/params.yaml"
    assert args[args.index("--data") + 1] == "/mnt/hndsr/runs/r1/data"


def test_pipeline_overrides_become_cli_arguments() -> None:
    overrides = {"data.train_dir": "/x", "data.test_fraction": 0, "train.operator.steps": 600}
    assert cli_args("quick", overrides) == ("--profile", "quick", "--set", "train.operator.steps=600")
    assert cli_args("", {}) == ()
