"""KFP v2 components of the training DAG: thin typed interfaces, each one call into a step function
(``components.data_steps``, ``training_steps``, ``evaluation_steps``, ``registry_steps``).

They run in the project's training image (``deploy.image_tags.image_ref("train")``, tagged with the package
version), which has hndsr and kfp installed, so no package is pip-installed at run time. The bodies
are lightweight-component source: imports live inside them (KFP ships the function, not the module).
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from deploy.image_tags import image_ref

BASE_IMAGE = image_ref("train")


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare(
    data_uri: str,
    params: str,
    profile: str,
    mlflow_uri: str,
    data_version: str,
    code_version: str,
    dataset: Output[Dataset],
):
    """Raw HR images (folder or s3://) -> HR tiles, LR pairs per scale and catalog.parquet."""
    from components.data_steps import prepare_data

    dataset.metadata.update(
        prepare_data(
            data_uri,
            dataset.path,
            params=params,
            profile=profile,
            tracking_uri=mlflow_uri,
            data_version=data_version,
            code_version=code_version,
        )
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    dataset: Input[Dataset],
    params: str,
    profile: str,
    mlflow_uri: str,
    report: Output[Artifact],
    data_docs: Output[Artifact],
):
    """Great Expectations suites over the catalog; fails the pipeline naming each failed expectation.
    ``data_docs``: GX's data docs site (a folder: open its index.html; renders offline)."""
    from components.data_steps import validate_data

    report.metadata.update(
        validate_data(
            dataset.path,
            report.path,
            params=params,
            profile=profile,
            tracking_uri=mlflow_uri,
            docs_dir=data_docs.path,
        )
    )
    data_docs.metadata["index"] = "index.html"


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def initial_model(init_from: str, params: str, profile: str, mlflow_uri: str) -> str:
    """``init_from`` (release, none, a directory, s3://, models:/) resolved and verified (sha256,
    architecture): the pinned identity the train steps start from, as JSON."""
    from components.training_steps import pin_initial_model

    return pin_initial_model(init_from, params=params, profile=profile, tracking_uri=mlflow_uri)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def incumbent_model(mlflow_uri: str, model_name: str) -> str:
    """The model to beat: ``@champion``, else the release checkpoint registered as the champion (JSON)."""
    from components.training_steps import resolve_incumbent

    return resolve_incumbent(tracking_uri=mlflow_uri, model_name=model_name)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_autoencoder(
    dataset: Input[Dataset],
    params: str,
    profile: str,
    epochs: int,
    mlflow_uri: str,
    training_backend: str,
    initial_model: str,
    model: Output[Model],
):
    """Stage 1: the detail autoencoder, or ``initial_model``'s carried over. Metadata: stage, stages,
    version, sha256, mlflow_run_id, mode (from scratch / fine-tuned / carried over)."""
    from components.training_steps import train_stage

    model.metadata.update(
        train_stage(
            "autoencoder",
            dataset.path,
            model.path,
            params=params,
            profile=profile,
            epochs=epochs,
            tracking_uri=mlflow_uri,
            training_backend=training_backend,
            initial_model=initial_model,
        )
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_operator(
    dataset: Input[Dataset],
    init_model: Input[Model],
    params: str,
    profile: str,
    epochs: int,
    mlflow_uri: str,
    training_backend: str,
    initial_model: str,
    model: Output[Model],
):
    """Stage 2: the neural operator, on top of ``init_model`` (fine-tuned when ``initial_model`` is set)."""
    from components.training_steps import train_stage

    model.metadata.update(
        train_stage(
            "operator",
            dataset.path,
            model.path,
            params=params,
            profile=profile,
            epochs=epochs,
            tracking_uri=mlflow_uri,
            init_checkpoint=init_model.path,
            training_backend=training_backend,
            initial_model=initial_model,
        )
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_diffusion(
    dataset: Input[Dataset],
    init_model: Input[Model],
    params: str,
    profile: str,
    epochs: int,
    mlflow_uri: str,
    training_backend: str,
    initial_model: str,
    model: Output[Model],
):
    """Stage 3: the latent diffusion UNet, on top of ``init_model`` (autoencoder + operator frozen)."""
    from components.training_steps import train_stage

    model.metadata.update(
        train_stage(
            "diffusion",
            dataset.path,
            model.path,
            params=params,
            profile=profile,
            epochs=epochs,
            tracking_uri=mlflow_uri,
            init_checkpoint=init_model.path,
            training_backend=training_backend,
            initial_model=initial_model,
        )
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    params: str,
    profile: str,
    scales: list,
    diffusion_steps: int,
    lpips: bool,
    mlflow_uri: str,
    incumbent: str,
    metrics: Output[Metrics],
    evaluation: Output[Artifact],
    report: Output[HTML],
    min_gain_db: float = 0.05,
    lpips_tolerance: float = 0.01,
):
    """Held-out test split per scale, challenger beside the incumbent and bicubic on the same images:
    Metrics, the JSON and the HTML report (verdict, winners, per-image scores, best/worst examples).
    The report is this step's visualization in the Kubeflow UI; ``report.html`` and
    ``evaluation.json`` are written beside the artifacts for browsers."""
    from components.evaluation_steps import evaluate_model

    for name, value in evaluate_model(
        model.path,
        dataset.path,
        evaluation.path,
        report.path,
        metrics.path,
        params=params,
        profile=profile,
        scales=scales,
        diffusion_steps=diffusion_steps,
        lpips=lpips,
        tracking_uri=mlflow_uri,
        incumbent=incumbent,
        min_gain_db=min_gain_db,
        lpips_tolerance=lpips_tolerance,
        data_version=str(dataset.metadata.get("data_version", "")),
        code_version=str(dataset.metadata.get("code_version", "")),
    ).items():
        metrics.log_metric(name, value)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    dataset: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    report: Input[HTML],
    mlflow_uri: str,
    model_name: str,
    lpips_tolerance: float,
    min_gain_db: float,
    model_card: Output[Markdown],
    profile: str = "",
) -> str:
    """Model version + promotion gate (champion or challenger); returns the run's summary as JSON."""
    import json

    from components.registry_steps import register_model

    return json.dumps(
        register_model(
            model.path,
            model.metadata["mlflow_run_id"],
            evaluation.path,
            dataset.path,
            model_card.path,
            tracking_uri=mlflow_uri,
            model_name=model_name,
            lpips_tolerance=lpips_tolerance,
            min_gain_db=min_gain_db,
            report_uri=report.uri,
            profile=profile,
            training=dict(model.metadata),
            data_version=str(dataset.metadata.get("data_version", "")),
            code_version=str(dataset.metadata.get("code_version", "")),
        )
    )
