"""Run one training stage as a Kubeflow PyTorchJob (kubeflow.org/v1): the ``pytorchjob`` training backend.

:func:`pytorchjob_manifest` builds the same object as ``kubectl kustomize manifests/training/<stage>``
(a test checks they agree), with the run's paths and arguments filled in; :func:`run_pytorchjob`
creates it, waits for the operator's Succeeded/Failed condition and raises with the operator's
message (and the failed pods' log tails) on failure. :func:`train_stage_as_pytorchjob` is what a KFP
step calls: it stages params, data and the earlier stages' checkpoint on the shared training volume
(``hndsr-training``, mounted at ``/mnt/hndsr`` in the job's pods and in the launching step's pod),
runs the job and returns the checkpoint directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deploy.image_tags import image_ref
from hndsr.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hndsr.errors import HNDSRError, InputError

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
STAGES = ("autoencoder", "operator", "diffusion")
MOUNT = "/mnt/hndsr"  # the hndsr-training ReadWriteMany volume
CLAIM = "hndsr-training"
MASTER_PORT = 23456  # the operator's default; the port must be named pytorchjob-port


class PyTorchJobFailed(HNDSRError):
    """The training operator reported the job Failed (or it ran past its deadline)."""


class CustomObjects(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the launcher uses."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any: ...

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


@dataclass(frozen=True)
class JobSpec:
    """One stage's job. ``nodes`` pods (a Master and nodes - 1 Workers), ``gpus_per_node`` ranks each."""

    stage: str
    name: str = ""  # default: hndsr-train-<stage>
    namespace: str = "hndsr"
    image: str = field(default_factory=lambda: image_ref("train"))
    nodes: int = 2
    gpus_per_node: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    params_path: str = "/opt/hndsr/params.yaml"  # the image's copy; the pipeline writes its own
    data_dir: str = f"{MOUNT}/data/processed/train/hr"
    run_dir: str = f"{MOUNT}/runs/current"
    extra_args: tuple[str, ...] = ()  # e.g. ("--profile", "quick", "--set", "train.operator.steps=100")
    backoff_limit: int = 3

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(f"unknown stage {self.stage!r}: use one of {', '.join(STAGES)}")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise InputError("a PyTorchJob needs nodes >= 1 and gpus_per_node >= 1")

    @property
    def job_name(self) -> str:
        return self.name or f"hndsr-train-{self.stage}"


def _pod_template(spec: JobSpec) -> dict[str, Any]:
    gpus = str(spec.gpus_per_node)
    resources = {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": gpus}
    args = [
        "--nnodes=$(PET_NNODES)",
        "--node-rank=$(PET_NODE_RANK)",
        "--nproc-per-node=$(PET_NPROC_PER_NODE)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "hndsr_cli",
        "train",
        "--stage",
        "$(HNDSR_STAGE)",
        "--params",
        spec.params_path,
        "--data",
        spec.data_dir,
        "--set",
        "data.test_fraction=0",  # prepare already held the test sources out
        "--out",
        spec.run_dir,
        "--no-progress",
        *spec.extra_args,
    ]
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "hndsr-train"}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "pytorch",  # the operator finds its container by this name
                    "image": spec.image,
                    "command": ["torchrun"],
                    "args": args,
                    "env": [{"name": "HNDSR_STAGE", "value": spec.stage}, {"name": "HOME", "value": "/tmp"}],
                    "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT}],
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "training", "mountPath": MOUNT},
                        {"name": "dshm", "mountPath": "/dev/shm"},  # NCCL's shared-memory transport
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "training", "persistentVolumeClaim": {"claimName": CLAIM}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            ],
        },
    }


def pytorchjob_manifest(spec: JobSpec) -> dict[str, Any]:
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _pod_template(spec)}}
    if spec.nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.nodes - 1,
            "restartPolicy": "OnFailure",
            "template": _pod_template(spec),
        }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": spec.job_name,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/part-of": "hndsr"},
        },
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": {
                "backoffLimit": spec.backoff_limit,
                "cleanPodPolicy": "None",  # keep the pods of a failed job for their logs
                "ttlSecondsAfterFinished": 86400,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_outcome(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Succeeded" | "Failed", message) once the operator has decided, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message", "")
    return None


def run_pytorchjob(
    spec: JobSpec,
    *,
    api: CustomObjects | None = None,
    timeout_s: float = 7 * 24 * 3600,
    poll_s: float = 15.0,
) -> dict[str, Any]:
    """Create the job and block until it succeeds; :class:`PyTorchJobFailed` when it fails or times out."""
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config() if os.environ.get(
            "KUBERNETES_SERVICE_HOST"
        ) else config.load_kube_config()
        api = client.CustomObjectsApi()
    body = pytorchjob_manifest(spec)
    api.create_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, body)
    logger.info("created PyTorchJob %s/%s (%d pods)", spec.namespace, spec.job_name, spec.nodes)
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, spec.job_name)
        outcome = job_outcome(job)
        if outcome and outcome[0] == "Succeeded":
            return dict(job)
        if outcome:
            raise PyTorchJobFailed(
                f"PyTorchJob {spec.namespace}/{spec.job_name} (stage {spec.stage}) failed: {outcome[1]}; "
                f"see `kubectl -n {spec.namespace} logs -l training.kubeflow.org/job-name={spec.job_name}`. "
                f"Creating it again resumes from the state file in {spec.run_dir}"
            )
        if time.monotonic() > deadline:
            raise PyTorchJobFailed(
                f"PyTorchJob {spec.namespace}/{spec.job_name} did not finish within {timeout_s:.0f} s"
            )
        time.sleep(poll_s)


def cli_args(profile: str, overrides: dict[str, Any]) -> tuple[str, ...]:
    """``hndsr train`` arguments for a profile and dotted overrides (``data.*`` is set by the job itself)."""
    args: list[str] = ["--profile", profile] if profile else []
    for key, value in overrides.items():
        if not key.startswith("data."):
            args += ["--set", f"{key}={value}"]
    return tuple(args)


def train_stage_as_pytorchjob(
    stage: str,
    train_dir: str | Path,
    *,
    params_text: str,
    run_id: str,
    init_checkpoint: str | Path | None = None,
    extra_args: tuple[str, ...] = (),
    mount: str | Path = MOUNT,
    api: CustomObjects | None = None,
    **job: Any,
) -> Path:
    """Stage inputs on the shared volume, run ``stage`` as a PyTorchJob, return the checkpoint directory.

    Layout on the volume: ``runs/<run_id>/`` (params.yaml, the checkpoint, state files) and
    ``runs/<run_id>/data/`` (the train HR images). A later stage of the same run id starts from the
    checkpoint the earlier one left there; ``init_checkpoint`` seeds it otherwise.
    """
    root = Path(mount)
    if not root.is_dir():
        raise InputError(
            f"training_backend=pytorchjob needs the {CLAIM} volume mounted at {root} in this step's pod "
            "(the same ReadWriteMany claim the job's pods mount; manifests/training/storage.yaml)"
        )
    run = root / "runs" / run_id
    data = run / "data"
    if not data.is_dir():
        shutil.copytree(train_dir, data)
    run.mkdir(parents=True, exist_ok=True)
    (run / "params.yaml").write_text(params_text)
    if init_checkpoint:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(Path(init_checkpoint) / name, run / name)
    # Paths as the job's pods see them: the volume is mounted at MOUNT there.
    seen = Path(MOUNT) / "runs" / run_id
    spec = JobSpec(
        stage=stage,
        name=f"hndsr-{run_id}-{stage}"[:63].rstrip("-"),
        params_path=str(seen / "params.yaml"),
        data_dir=str(seen / "data"),
        run_dir=str(seen),
        extra_args=extra_args,
        **job,
    )
    run_pytorchjob(spec, api=api)
    return run
