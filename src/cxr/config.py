"""The typed tree of ``params.yaml``: one pydantic model per section, nested as the file is.

Each stage reads only the sections it declares in ``dvc.yaml``::

    params = load_params("params.yaml")
    cfg = section(params, "split", SplitConfig)

Every section refuses unknown keys (``extra="forbid"``), names its choices with ``Literal`` and its
bounds with ``Field``; :func:`parse` turns pydantic's errors into one :class:`ConfigError` whose
message names the key, what was found, what was expected and, where it helps, the fix. Numbers are
converted: ``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML (YAML 1.1) reads as a *string*.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from cxr.metric_names import CI_METRICS, SelectMetric, ThresholdMethod
from cxr.schema import ConfigError as ConfigError  # re-exported: the stages' one error type and way in
from cxr.schema import Section, few, parse
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


Fraction = Annotated[float, Field(ge=0, le=1)]  # a probability or a share
NonNegative = Annotated[int, Field(ge=0)]
MAX_LR = 10.0  # no optimiser here trains at a larger step; a typo such as 1e6 is refused before training
Scheduler = Literal["steplr", "cosine", "none"]  # train.scheduler, models.<name>.scheduler
ResizeMode = Literal["stretch", "pad"]  # preprocess.resize, the model card's cache_resize
RESIZE_MODES: tuple[str, ...] = typing.get_args(ResizeMode)
Source = Literal["synthetic", "path", "url", "kaggle"]
SOURCES: tuple[str, ...] = typing.get_args(Source)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class SyntheticConfig(Section):
    patients: int = Field(240, ge=4)  # number of children; each has 1..max images
    max_images_per_patient: int = Field(3, ge=1)
    pneumonia_ratio: float = Field(2.9, gt=0)  # PNEUMONIA : NORMAL patients, as in the real train split
    min_size: int = 160  # image side lengths are drawn in [min_size, max_size]
    max_size: int = 320
    official_test_fraction: float = Field(0.2, ge=0, lt=1)  # share of patients written to raw/test
    official_val_images: int = Field(8, ge=0)  # a tiny val/ folder, like the real 16-image one
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> SyntheticConfig:
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError(f"need 16 <= min_size <= max_size, found {self.min_size}, {self.max_size}")
        return self


class ArchiveLimits(Section):
    """``data.archive``: what extracting an archive may write (a 2 MB zip can hold terabytes of zeros);
    ``max_total_bytes`` also caps a ``data.source: url`` download (a server may stream without end)."""

    max_total_bytes: int = Field(50_000_000_000, gt=0)  # all members together (the Kaggle copy: 1.2 GB)
    max_member_bytes: int = Field(1_000_000_000, gt=0)  # one member (a full-size X-ray is a few MB)
    max_ratio: float = Field(100.0, ge=1)  # uncompressed total / archive size (JPEGs barely compress: ~1)


class DataConfig(Section):
    source: Source = "synthetic"
    path: str | None = None  # folder or .zip/.tar.gz archive (source=path)
    url: str | None = None  # HTTP(S) archive (source=url)
    sha256: str | None = None  # expected sha256 of the downloaded archive (optional)
    download_dir: str = "data/download"  # where url/kaggle archives are kept for resumption
    kaggle_dataset: str = "paultimothymooney/chest-xray-pneumonia"
    link: bool = True  # path/kaggle: hardlink images into data/raw when possible (copy otherwise)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    archive: ArchiveLimits = Field(default_factory=ArchiveLimits)
    timeout: float = Field(60.0, gt=0, allow_inf_nan=False)  # url: seconds to connect; the min_rate window
    min_rate: int = Field(1024, ge=0)  # url: bytes/s averaged over `timeout` seconds, else abandoned (0: none)

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source == "path" and not self.path:
            raise ValueError("source=path needs data.path (a folder or .zip/.tar.gz)")
        if self.source == "url" and not self.url:
            raise ValueError("source=url needs data.url (an http(s) link to an archive)")
        return self


class Plausibility(Section):
    """``split.plausibility``: what a chest radiograph cannot be. Quarantined at split, a warning at predict."""

    min_side: int = Field(32, ge=1)  # shorter side, pixels (the Kaggle images: 127 px and more)
    max_aspect: float = Field(4.0, ge=1)  # longer side / shorter side (chest films: about 0.5 to 2)
    min_range: int = Field(8, ge=0, le=255)  # grey levels between the 1st and 99th percentile (blank: 0)
    min_smoothness: float = Field(0.5, ge=-1, le=1)  # neighbouring-pixel correlation (radiographs >= 0.88)


class SplitConfig(Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)  # of train patients, per class
    test_fraction: float = Field(0.15, ge=0, lt=1)  # of train patients, only when the source has no test split
    # The official 16-image val/ joins train before the draw; false: it stays val, added to the drawn val.
    merge_official_val: bool = True
    # The one pixel limit: split quarantines larger images, cxr predict and the served model refuse them.
    max_pixels: int = Field(50_000_000, gt=0)
    seed: int = 42
    workers: NonNegative = 0  # verification processes (hash + full decode); 0 = all cores
    plausibility: Plausibility = Field(default_factory=Plausibility)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class PreprocessConfig(Section):
    cache_size: int = Field(96, ge=16, le=1024)  # side of the square cache images, pixels
    # How the aspect ratio is handled: "stretch" resizes to cache_size x cache_size (as the
    # reference notebook's Resize((224, 224)) does); "pad" keeps it and pads with black.
    resize: ResizeMode = "stretch"
    workers: NonNegative = 0  # decoding processes; 0 = all cores


EXTERNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a column name in dvc exp show and the results table
SYNTHETIC_SET = "synthetic"  # an external set given as this draws a synthetic cohort (external.synthetic)


class ExternalSynthetic(Section):
    """``external.synthetic``: what a set given as ``synthetic`` draws: another cohort of data.synthetic's generator."""

    patients: int = Field(60, ge=4)
    pneumonia_ratio: float = Field(1.67, gt=0)  # PNEUMONIA : NORMAL, the official test split's balance (train: 2.9)
    seed: int = 1  # another seed than data.synthetic's: other children


class ExternalConfig(Section):
    """``external``: named external validation sets, evaluated for every model and never used for a choice."""

    sets: dict[str, str] = Field(default_factory=dict)  # name -> folder or .zip/.tar.gz, or "synthetic"
    synthetic: ExternalSynthetic = Field(default_factory=ExternalSynthetic)
    link: bool = True  # folders: hardlink the images into data/external when on one filesystem (else copy)
    # An external image whose 32x32 thumbnail correlates this much with one of the run's images is the
    # same picture (re-encoded or resized): refused. Kermany test vs train: at most 0.976; copies: 0.9998.
    max_similarity: float = Field(0.995, gt=0, le=1)

    @field_validator("sets", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("sets")
    @classmethod
    def _set_names(cls, sets: dict[str, str]) -> dict[str, str]:
        for name, spec in sets.items():
            if not EXTERNAL_NAME.match(name):
                raise ValueError(
                    f"name {name!r} must be lower-case letters, digits and _ (a letter first, at most 40 "
                    "characters): it becomes a column name. E.g. kermany_a"
                )
            if not spec:
                raise ValueError(f"{name}: give a folder or .zip/.tar.gz, or {SYNTHETIC_SET!r}")
        return sets


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
