"""The train image as Kubeflow runs it: the container command and arguments of the compiled pipeline
YAML's executors (train-autoencoder and evaluate), their placeholders resolved by kfp.local's own
functions, run with podman with the artifacts on a mounted directory; the outputs equal those of the
same command run here, in this environment (what kfp.local's SubprocessRunner does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from imagesets import write_clean_set
from kfp import dsl
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2
from podmanstack import podman, run_args
from safetensors.numpy import load_file
from servingstack import write_checkpoint
from synthetic import tiny_pipeline_params

from components.data_steps import prepare_data
from deploy.image_tags import image_ref
from pipelines.runner import PipelineArguments, compile_pipeline

# The first test may build the images (`make images`: minutes when the layer cache is cold).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MOUNT = "/mnt/kfp"  # where the work directory appears in the container
ENV = {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def tiny_params() -> str:
    """tests/pipeline's tiny recipe (3 held-out tiles) as one line of JSON, as
    ``pipelines.runner.read_params`` passes params to the pipeline."""
    return json.dumps(tiny_pipeline_params(evaluate_limit=3), sort_keys=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compiled pipeline, a prepared dataset and a tiny full model, in a directory the container's
    user (10001) can write to."""
    root = tmp_path_factory.mktemp("train-image")
    params = tiny_params()
    spec_path = compile_pipeline(root / "pipeline.yaml", PipelineArguments(params=params, profile="ci"))
    write_clean_set(root / "raw", n=10)
    prepare_data(str(root / "raw"), str(root / "dataset"), params=params, profile="ci", tracking_uri="")
    write_checkpoint(root / "model")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    return {"root": root, "params": params, "spec": yaml.safe_load(spec_path.read_text())}


def resolved_command(spec: dict[str, Any], task: str, arguments: dict[str, Any], base: str) -> list[str]:
    """The executor's command + args with every placeholder resolved (kfp.local's functions), for
    artifacts under ``base`` (this machine's path of the work directory, or its mount point)."""
    component = pipeline_spec_pb2.ComponentSpec()
    json_format.ParseDict(spec["components"][f"comp-{task}"], component, ignore_unknown_fields=True)
    container = spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
    assert container["image"] == image_ref("train")
    task_root = f"{base}/{task}"
    artifacts = {
        "dataset": dsl.Dataset(name="dataset", uri=f"{base}/dataset", metadata={}),
        "model": dsl.Model(name="model", uri=f"{base}/model", metadata={}),
    }
    args = dict(arguments) | {
        k: v
        for k, v in artifacts.items()
        if k in spec["components"][f"comp-{task}"]["inputDefinitions"].get("artifacts", {})
    }
    args["mlflow_uri"] = f"sqlite:///{base}/mlflow.db"
    executor_input = executor_input_utils.construct_executor_input(component, args, task_root, False)
    return placeholder_utils.replace_placeholders(
        full_command=[*container["command"], *container["args"]],
        executor_input_dict=executor_input_utils.executor_input_to_dict(executor_input, component),
        pipeline_resource_name="hndsr-training",
        task_resource_name=task,
        pipeline_root=base,
        unique_pipeline_id="test",
    )


def run_both(work: dict[str, Any], image: str, task: str, arguments: dict[str, Any]) -> tuple[Path, Path]:
    """The task in the container (work dir mounted) and here (a copy of the same inputs)."""
    root: Path = work["root"]
    box, here = root / f"{task}.container", root / f"{task}.local"
    for side in (box, here):
        side.mkdir(mode=0o777)
        side.chmod(0o777)
        for name in ("dataset", "model"):
            shutil.copytree(root / name, side / name)
    for path in box.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)

    command = resolved_command(work["spec"], task, arguments, MOUNT)
    env = [a for k, v in ENV.items() for a in ("-e", f"{k}={v}")]
    proc = podman(
        *run_args(mounts=[(box, MOUNT, "rw")]), *env, "--workdir", "/tmp", "--entrypoint", command[0],
        image, *command[1:], check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    command = resolved_command(work["spec"], task, arguments, str(here))
    local_env = os.environ | ENV | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    local = subprocess.run(command, cwd=here, env=local_env, capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stdout[-4000:] + local.stderr[-4000:]
    return box / task, here / task


def outputs(task_dir: Path) -> dict[str, Any]:
    return dict(json.loads((task_dir / "executor_output.json").read_text()))


def metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(output["artifacts"][name]["artifacts"][0]["metadata"])


def test_train_autoencoder_in_the_image_equals_the_local_run(
    images: dict[str, str], work: dict[str, Any]
) -> None:
    arguments = {"params": work["params"], "profile": "ci", "epochs": 0, "training_backend": "in-process"}
    arguments["initial_model"] = ""  # the initial-model task's output: "" = from scratch
    box, here = run_both(work, images["train"], "train-autoencoder", arguments)
    got, want = metadata(outputs(box), "model"), metadata(outputs(here), "model")
    assert got["stage"] == "autoencoder" and got["steps"] == 2
    assert got["sha256"] == want["sha256"]  # the same weights, bit for bit
    a, b = (
        load_file(str(box / "model" / "model.safetensors")),
        load_file(str(here / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_evaluate_in_the_image_equals_the_local_run(images: dict[str, str], work: dict[str, Any]) -> None:
    arguments = {
        "params": work["params"], "profile": "ci", "scales": [4.0], "diffusion_steps": 0, "lpips": False,
        "incumbent": "",  # the incumbent task's output: "" = none, the model beside bicubic only
        "min_gain_db": 0.05, "lpips_tolerance": 0.01,  # the gate, for the report's verdict
    }  # fmt: skip
    box, here = run_both(work, images["train"], "evaluate", arguments)
    got, want = metadata(outputs(box), "metrics"), metadata(outputs(here), "metrics")
    assert 10 < got["model_psnr_y_x4"] < 60 and 10 < got["bicubic_psnr_y_x4"] < 60
    assert got.keys() == want.keys()
    for key, value in want.items():
        if "seconds" not in key and "time" not in key:
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert (box / "report").is_file() and "x4" in (box / "report").read_text()
    assert (box / "report.html").read_text() == (box / "report").read_text()  # the copy a browser opens
