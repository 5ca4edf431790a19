"""The typed tree of ``params.yaml``: one pydantic model per section, nested as the file is.

Each stage reads only the sections it declares in ``dvc.yaml``::

    params = load_params("params.yaml")
    cfg = section(params, "split", SplitConfig)

Every section refuses unknown keys (``extra="forbid"``), names its choices with ``Literal`` and its
bounds with ``Field``; :func:`parse` turns pydantic's errors into one :class:`ConfigError` whose
message names the key, what was found, what was expected and, where it helps, the fix. Numbers are
converted: ``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML (YAML 1.1) reads as a *string*.
The data stages' sections (data, split, preprocess, external) are defined in :mod:`cxr.data.config`; the
shared machinery (:class:`Section`, :func:`parse`, the error messages) in :mod:`cxr.schema`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from cxr.data.config import DataConfig, ExternalConfig, PreprocessConfig, SplitConfig
from cxr.metric_names import CI_METRICS, SelectMetric, ThresholdMethod
from cxr.schema import ConfigError as ConfigError  # re-exported: the stages' one error type and way in
from cxr.schema import Fraction, NonNegative, Section, few, parse
from cxr.schema import read_yaml as read_yaml
from cxr.schema import section as section


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    check_top_level(data, str(path))
    return data


def check_top_level(data: dict[str, Any], where: str = "params.yaml") -> None:
    """Refuse unknown top-level keys, as sections refuse theirs (``-S +learning_rate=0.1`` would be ignored)."""
    known = set(Params.model_fields)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {few(unknown)}; valid keys are {sorted(known)}. A misspelt knob "
            f"would be ignored silently (the learning rate is `lr`): fix or remove it (dvc exp run -S lr=...)"
        )


def _finite_lr(lr: float | None) -> float | None:
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise ValueError(f"must be a finite number in (0, {MAX_LR}], found {lr}; e.g. -S lr=1e-4")
    return lr


def _devices(value: Any) -> int | str:
    """train.devices / sweep.devices: a positive integer or auto."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value) if not isinstance(value, bool) and float(value).is_integer() else 0
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"expected a positive integer or auto, found {value!r}")
    return n


MAX_LR = 10.0  # no optimiser here trains at a larger step; a typo such as 1e6 is refused before training
Scheduler = Literal["steplr", "cosine", "none"]  # train.scheduler, models.<name>.scheduler


# --------------------------------------------------------------------------------------------
# Sections (the data stages' own: cxr.data.config)
# --------------------------------------------------------------------------------------------


MAX_BLUR_SIGMA = 8.0  # output pixels; the blur kernel spans 3 sigma either side
MAX_SHARPEN = 5.0  # unsharp-mask gain; more only amplifies noise


class AugmentConfig(Section):
    """The reference notebook's augmentation table; every transform is drawn per image."""

    model_config = ConfigDict(frozen=True)  # part of the model card: a run's augmentation never changes

    enabled: bool = True
    affine_degrees: float = 15.0  # RandomAffine rotation range, degrees
    affine_translate: float = Field(0.1, ge=0, lt=1)  # RandomAffine translation, fraction of the side
    crop_scale: tuple[float, float] = (0.8, 1.0)  # RandomResizedCrop area fraction, 0 < low <= high <= 1
    hflip_p: Fraction = 0.5  # RandomHorizontalFlip probability
    rotation_degrees: float = 15.0  # RandomRotation range, degrees
    brightness: float = Field(0.2, ge=0)  # ColorJitter brightness
    contrast: float = Field(0.2, ge=0)  # ColorJitter contrast
    # ColorJitter saturation and hue do nothing to a grayscale X-ray, so they are not knobs here.
    # Intensity augmentations beyond the reference (defaults: off), for another scanner's exposure:
    gamma: tuple[float, float] = (1.0, 1.0)  # x ** gamma, gamma log-uniform in [low, high] (1 = unchanged)
    blur_p: Fraction = 0.0  # probability of a Gaussian blur
    blur_sigma: float = Field(1.0, gt=0, le=MAX_BLUR_SIGMA)  # blurred images: sigma uniform in (0, blur_sigma]
    sharpen_p: Fraction = 0.0  # probability of an unsharp mask, x + a * (x - blur(x)), blur sigma 1 pixel
    sharpen_amount: float = Field(1.0, gt=0, le=MAX_SHARPEN)  # sharpened images: a uniform in [0, amount]
    noise_std: Fraction = 0.0  # additive Gaussian noise, std uniform in [0, noise_std] (intensities in [0, 1])

    @field_validator("crop_scale")
    @classmethod
    def _crop(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if not 0 < pair[0] <= pair[1] <= 1:
            raise ValueError(f"need 0 < low <= high <= 1, found {pair}")
        return pair

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if not 0 < pair[0] <= pair[1]:
            raise ValueError(f"need 0 < low <= high (1 = unchanged), found {pair}")
        return pair


class ModelOverride(Section):
    """Per-model overrides of the top-level knobs (``models.<name>``); None = use the global."""

    lr: float | None = None
    batch_size: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=16)
    scheduler: Scheduler | None = None
    pretrained: bool | None = None
    weights: str | None = None  # local torchvision state_dict file or save_pretrained directory
    # Keyword arguments of the model's builder (the registry lists them), e.g. vgg16 {batch_norm: true}
    options: dict[str, Any] = Field(default_factory=dict)

    _lr = field_validator("lr")(_finite_lr)

    @field_validator("options", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class TrainConfig(Section):
    pretrained: bool = False  # global; models.<name>.pretrained overrides
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Scheduler = "steplr"
    step_size: int = Field(5, ge=1)  # StepLR
    gamma: float = Field(0.5, gt=0)  # StepLR
    class_weight: Literal["balanced", "none"] = "balanced"  # balanced: pos_weight = n_neg / n_pos
    select_metric: SelectMetric = "val_auc"  # which epoch's checkpoint is kept (validation only)
    early_stopping_patience: NonNegative = 0  # epochs without improvement before stopping; 0 = off
    num_workers: NonNegative = 0  # DataLoader workers
    compile: bool = False  # torch.compile the model
    amp: bool = True  # mixed precision on CUDA (bf16 where supported)
    devices: Union[int, str] = 1  # 1 | N | auto (every visible GPU): N > 1 runs DDP under torchrun (gloo on CPU)
    freeze_backbone_epochs: NonNegative = 0  # pretrained models: train only the new head for the first N epochs
    backbone_lr_factor: float = Field(1.0, gt=0)  # pretrained: backbone lr = lr * factor (freeze: the option above)
    resume_every: float = Field(60.0, ge=0, allow_inf_nan=False)  # seconds between resume states; 0 = every epoch
    # Temperature scaling fitted on validation after training (cxr.calibration): auto keeps it when it lowers the
    # validation NLL by more than a small tolerance | true: always | false: never
    calibrate: Union[bool, Literal["auto"]] = "auto"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    _devices = field_validator("devices", mode="before")(_devices)


class MlflowConfig(Section):
    experiment: str = "chest-xray-pneumonia"
    registered_model: str = "cxr-pneumonia"  # name in the Model Registry (compare registers the best)
    champion_alias: str = "champion"  # the registry alias of the model served and predicted by default
    log_model: bool = True  # train: also log each model with mlflow.pytorch.log_model (VGG16 ~ 0.5 GB)


class Globals(Section):
    """Top-level knobs, kept top-level so `dvc exp run -S lr=1e-4 -S batch_size=16` reaches every model."""

    seed: int = 42
    lr: float = 1e-3
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(2, ge=1)
    image_size: int = Field(64, ge=16)

    _lr = field_validator("lr")(_finite_lr)


def load_globals(params: dict[str, Any]) -> Globals:
    return parse(Globals, {k: params[k] for k in Globals.model_fields if k in params})


def load_model_override(params: dict[str, Any], model: str) -> ModelOverride:
    """``models.<name>`` of params.yaml: that model's overrides of the top-level knobs."""
    return parse(ModelOverride, (params.get("models") or {}).get(model) or {}, f"models.{model}")


class OperatingTarget(Section):
    """One of ``evaluate.operating_points``: a sensitivity or specificity to meet on validation."""

    metric: Literal["sensitivity", "specificity"]
    target: float = Field(gt=0, lt=1)


def _default_operating_points() -> list[OperatingTarget]:
    return [OperatingTarget(metric="sensitivity", target=0.95), OperatingTarget(metric="specificity", target=0.95)]


class ReferConfig(Section):
    """``evaluate.refer``: the band of probabilities answered REFER, chosen on validation at training."""

    # Error among the decided validation images at most this (cxr.abstention); null = no band, every image decided.
    target_error: float | None = Field(0.05, gt=0, lt=0.5)


class EvaluateConfig(Section):
    """``evaluate``: the test split, touched once, with bootstrap confidence intervals."""

    threshold: ThresholdMethod = "youden"  # youden | midpoint (both chosen on validation) | fixed
    fixed_threshold: float = Field(0.5, gt=0, lt=1)  # threshold=fixed: this value; also the second operating point
    n_resamples: int = Field(1000, ge=10)  # bootstrap resamples for the CIs (compare's paired bootstrap too)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0  # bootstrap and augmentation-figure draws
    batch_size: int = Field(64, ge=1)  # prediction batch size
    gallery_per_outcome: int = Field(4, ge=1)  # images per TP/TN/FP/FN row of the gallery
    gradcam: bool = True  # Grad-CAM overlays in the gallery
    augment_examples: int = Field(3, ge=1)  # rows of the original-vs-augmented figure
    augment_draws: int = Field(4, ge=1)  # augmented draws per row
    # Thresholds set on validation to meet each target; test and external sets are scored at them.
    operating_points: list[OperatingTarget] = Field(default_factory=_default_operating_points)
    refer: ReferConfig = Field(default_factory=ReferConfig)


class SweepConfig(Section):
    """``sweep``: batch_size x lr grid for one model, every configuration from a fresh initialisation."""

    model: str = "resnet50"
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    lrs: list[float] = Field(default_factory=lambda: [1e-3, 1e-4, 1e-2], min_length=1)
    epochs: int = Field(3, ge=1)
    image_size: int | None = Field(None, ge=16)  # None = the model's training image_size
    select_metric: SelectMetric = "val_auc"  # on validation, never test
    devices: Union[int, str] = "auto"  # processes, one device each: auto = every visible GPU (1 on CPU) | N

    _devices = field_validator("devices", mode="before")(_devices)

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, lrs: list[float]) -> list[float]:
        if not all(math.isfinite(lr) and 0 < lr <= MAX_LR for lr in lrs):
            raise ValueError(f"need finite numbers in (0, {MAX_LR}], found {lrs}")
        return lrs

    @model_validator(mode="after")
    def _distinct(self) -> SweepConfig:
        if len(set(self.batch_sizes)) != len(self.batch_sizes) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError("batch_sizes and lrs must not repeat values")
        return self


BarMetric = Literal[CI_METRICS]  # type: ignore[valid-type]


class CompareConfig(Section):
    """``compare``: results tables and figures; the best model (on validation) goes to the Model Registry."""

    select_metric: SelectMetric = "val_auc"  # from metrics/train/<model>.json, on validation
    # register the selected model under mlflow.registered_model (fails if MLflow is down); `register` in
    # params.yaml (a field of that name would shadow the class's ABC register())
    register_model: bool = Field(True, alias="register")
    promote: Literal["better", "always"] = "better"  # better: move the champion only to a better model
    bar_metrics: list[BarMetric] = Field(
        default_factory=lambda: ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc"]
    )


class Params(Globals):
    """The whole of params.yaml: the top-level knobs and every section (``check_params`` validates it)."""

    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    external: ExternalConfig = Field(default_factory=ExternalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)

    @field_validator(
        "data",
        "split",
        "preprocess",
        "external",
        "train",
        "models",
        "mlflow",
        "evaluate",
        "sweep",
        "compare",
        mode="before",
    )
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return {} if value is None else value
