"""The training DAG: prepare -> validate -> train autoencoder -> operator -> diffusion -> evaluate ->
register. Wiring only; each step is a component of ``components.training_components``.

Parameters:
- ``data_uri``: folder or s3://bucket/prefix of raw HR images; ``params``: params.yaml as JSON text;
  ``profile``: one of its profiles ("" = the base values, the release recipe).
- ``*_epochs``: epochs per stage (0 = the profile's steps); ``scales``: evaluation scales (4 required,
  the gate compares at x4); ``diffusion_steps``: DDIM steps at evaluation (0 = deterministic path);
  ``lpips``: score LPIPS.
- ``init_from``: the model training starts from: ``release`` (the shipped checkpoint), ``none``
  (from scratch), a checkpoint directory, ``s3://...`` or ``models:/name@alias``; resolved and verified
  by the first step. With one, ``finetune.stages`` of params.yaml continue from its weights.
- The incumbent (``@champion``, else the release checkpoint, registered first) is scored beside the
  challenger on the same held-out tiles; ``min_gain_db``: the Y-PSNR margin at x4 the challenger needs
  to be promoted; ``lpips_tolerance``: how much worse than the incumbent's LPIPS a new champion may be
  (both default to params.yaml's ``gate`` section);
  ``mlflow_uri`` ("" = the pod's MLFLOW_TRACKING_URI, else a local sqlite store); ``model_name``.
- ``training_backend``: where training runs: "in-process" (inside the step's pod) or "pytorchjob"
  (each train step launches a Kubeflow PyTorchJob, components/pytorchjob.py, and waits for it). The
  PyTorchJob backend stages its inputs on the ``hndsr-training`` ReadWriteMany claim, so the pipeline
  compiled for it (``pipeline_for("pytorchjob")``, what ``compile_pipeline``/``submit`` choose from
  the arguments) mounts that claim at /mnt/hndsr in the three train steps' pods; the in-process
  pipeline mounts nothing, and a run of it given "pytorchjob" fails in the train step saying so.
- ``data_version`` / ``code_version``: identities of the input data and the code. Only prepare takes
  them, and every later step descends from its output, so a change re-runs the whole DAG while an
  unchanged run is served from the cache. ``hndsr pipeline run`` fills both with content digests.
"""

from typing import Any

from kfp import dsl, kubernetes

from components.pytorchjob import CLAIM, MOUNT
from components.training_components import (
    evaluate,
    incumbent_model,
    initial_model,
    prepare,
    register,
    train_autoencoder,
    train_diffusion,
    train_operator,
    validate,
)

PIPELINE_NAME = "hndsr-training"
GPU_RESOURCE = "nvidia.com/gpu"
TRAIN_RETRIES = 2  # a preempted or evicted GPU node; data and code errors fail the same way twice
EVAL_RETRIES = 1
# True only while pipeline_for builds the PyTorchJob variant's graph (the body runs once per build).
_mount_training_volume = False


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="HNDSR: initial model, prepare, validate, train x3, evaluate against the incumbent, register",
)
def training_pipeline(
    data_uri: str = "data/raw",
    params: str = "",
    profile: str = "",
    autoencoder_epochs: int = 0,
    operator_epochs: int = 0,
    diffusion_epochs: int = 0,
    scales: list = [2.0, 3.0, 4.0],  # noqa: B006 - KFP takes parameter defaults from the signature
    diffusion_steps: int = 0,
    lpips: bool = True,
    lpips_tolerance: float = 0.01,
    min_gain_db: float = 0.05,
    init_from: str = "release",
    mlflow_uri: str = "",
    model_name: str = "hndsr",
    training_backend: str = "in-process",
    data_version: str = "",
    code_version: str = "",
) -> str:
    initial = initial_model(init_from=init_from, params=params, profile=profile, mlflow_uri=mlflow_uri)
    initial.set_display_name("initial model")
    initial.set_caching_options(False)  # @champion moves; the pinned sha256 keeps later steps cacheable
    data = prepare(
        data_uri=data_uri,
        params=params,
        profile=profile,
        mlflow_uri=mlflow_uri,
        data_version=data_version,
        code_version=code_version,
    )
    data.set_display_name("prepare data")
    data.after(initial)  # a bad init_from fails the run at its first step
    checked = validate(dataset=data.outputs["dataset"], params=params, profile=profile, mlflow_uri=mlflow_uri)
    checked.set_display_name("validate data")

    common = {
        "params": params,
        "profile": profile,
        "mlflow_uri": mlflow_uri,
        "training_backend": training_backend,
        "initial_model": initial.output,
    }
    autoencoder = train_autoencoder(dataset=data.outputs["dataset"], epochs=autoencoder_epochs, **common)
    autoencoder.after(checked)  # never train on data that failed validation
    operator = train_operator(
        dataset=data.outputs["dataset"],
        init_model=autoencoder.outputs["model"],
        epochs=operator_epochs,
        **common,
    )
    diffusion = train_diffusion(
        dataset=data.outputs["dataset"],
        init_model=operator.outputs["model"],
        epochs=diffusion_epochs,
        **common,
    )
    for task in (autoencoder, operator, diffusion):
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        task.set_retry(num_retries=TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2.0)
        if _mount_training_volume:  # where the PyTorchJob backend stages data, params and checkpoints
            kubernetes.mount_pvc(task, pvc_name=CLAIM, mount_path=MOUNT)

    incumbent = incumbent_model(mlflow_uri=mlflow_uri, model_name=model_name)
    incumbent.set_display_name("incumbent model")
    incumbent.set_caching_options(False)  # the registry changes between runs; its answer is pinned by sha256
    scored = evaluate(
        dataset=data.outputs["dataset"],
        model=diffusion.outputs["model"],
        params=params,
        profile=profile,
        scales=scales,
        diffusion_steps=diffusion_steps,
        lpips=lpips,
        mlflow_uri=mlflow_uri,
        incumbent=incumbent.output,
    )
    scored.set_retry(num_retries=EVAL_RETRIES)

    registered = register(
        dataset=data.outputs["dataset"],
        model=diffusion.outputs["model"],
        evaluation=scored.outputs["evaluation"],
        report=scored.outputs["report"],
        mlflow_uri=mlflow_uri,
        model_name=model_name,
        lpips_tolerance=lpips_tolerance,
        min_gain_db=min_gain_db,
    )
    registered.set_caching_options(False)  # the registry changes between runs; registering is idempotent
    return registered.outputs["Output"]


def _on_training_volume() -> Any:
    """The same pipeline with the training volume mounted in its train steps."""
    global _mount_training_volume
    _mount_training_volume = True
    try:
        return dsl.pipeline(name=PIPELINE_NAME, description=training_pipeline.description)(
            training_pipeline.pipeline_func
        )
    finally:
        _mount_training_volume = False


training_pipeline_on_volume = _on_training_volume()


def pipeline_for(training_backend: str) -> Any:
    """The pipeline to compile for a backend: the PyTorchJob one mounts the training volume."""
    return training_pipeline_on_volume if training_backend == "pytorchjob" else training_pipeline
