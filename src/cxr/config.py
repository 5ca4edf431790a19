"""Typed, validated views of ``params.yaml``: one dataclass per section.

Each stage reads only the sections it declares in ``dvc.yaml``::

    params = load_params("params.yaml")
    cfg = section(params, "split", SplitConfig)

Numbers are converted explicitly: ``dvc exp run -S lr=1e-5`` writes ``1e-05``, which PyYAML
(YAML 1.1) reads as a *string*. Unknown keys and wrong types fail with a message that names the
key, what was found and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import yaml

from cxr.metric_names import CI_METRICS, SELECT_METRICS, THRESHOLD_METHODS

T = TypeVar("T")


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type."""


# --------------------------------------------------------------------------------------------
# Generic loading
# --------------------------------------------------------------------------------------------


# Every top-level key params.yaml may hold: the global knobs (Globals) and the sections.
SECTIONS = ("data", "split", "preprocess", "external", "train", "models", "mlflow", "evaluate", "sweep", "compare")


def check_top_level(data: dict[str, Any], where: str = "params.yaml") -> None:
    """Refuse unknown top-level keys, as sections refuse theirs (``-S +learning_rate=0.1`` would be ignored)."""
    known = set(SECTIONS) | {f.name for f in dataclasses.fields(Globals)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {unknown}; valid keys are {sorted(known)}. A misspelt knob "
            f"would be ignored silently (the learning rate is `lr`): fix or remove it (dvc exp run -S lr=...)"
        )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one without a
    word (`lr: 0.1` ... `lr: 0.001` trains with 0.001), where DVC refuses the file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file (params.yaml, a configs/ recipe) as Python data; bad YAML is a ConfigError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from the repository root, or pass --params)")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        hint = (
            "Fix: YAML indents with spaces only; replace the tabs"
            if "\\t" in problem or "tab" in problem
            else "Fix: keep one of them"
            if "appears twice" in problem
            else "Fix: correct the YAML there (an unclosed quote or bracket, a missing colon, bad indentation)"
        )
        raise ConfigError(f"{where}: not valid YAML: {' '.join(problem.split())}. {hint}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    check_top_level(data, str(path))
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:  # noqa: C901  (goes with the pydantic config tree)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no"}:
            return value.lower() in {"true", "yes"}
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, found {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        try:
            return float(value)  # also accepts "1e-05" as written back by `dvc exp run -S`
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, found {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return str(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, found {list(value)!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, converting types and rejecting unknown keys."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, found {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # cls is a dataclass (T is unbounded)
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where or cls.__name__)
    return obj


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """The dataclass for top-level section ``name`` of ``params``."""
    return from_dict(cls, params.get(name) or {}, name)


def _check_devices(devices: object, where: str) -> None:
    ok = (isinstance(devices, int) and devices >= 1) or (isinstance(devices, str) and devices.lower() == "auto")
    _check(ok, f"{where}: expected a positive integer or auto, found {devices!r}")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    patients: int = 240  # number of children; each has 1..max images
    max_images_per_patient: int = 3
    pneumonia_ratio: float = 2.9  # PNEUMONIA : NORMAL patients, as in the real train split
    min_size: int = 160  # image side lengths are drawn in [min_size, max_size]
    max_size: int = 320
    official_test_fraction: float = 0.2  # share of patients written to raw/test (as Kaggle ships one)
    official_val_images: int = 8  # a tiny val/ folder, like the real 16-image one
    seed: int = 0

    def validate(self, where: str) -> None:
        _check(self.patients >= 4, f"{where}.patients: need at least 4, found {self.patients}")
        _check(self.max_images_per_patient >= 1, f"{where}.max_images_per_patient must be >= 1")
        _check(
            16 <= self.min_size <= self.max_size,
            f"{where}: need 16 <= min_size <= max_size, found {self.min_size}, {self.max_size}",
        )
        _check(0 <= self.official_test_fraction < 1, f"{where}.official_test_fraction must be in [0, 1)")


SOURCES = ("synthetic", "path", "url", "kaggle")


@dataclass
class ArchiveLimits:
    """``data.archive``: what extracting an archive may write (a 2 MB zip can hold terabytes of zeros)."""

    max_total_bytes: int = 50_000_000_000  # all members together (the Kaggle copy: 1.2 GB)
    max_member_bytes: int = 1_000_000_000  # one member (a full-size X-ray is a few MB)
    max_ratio: float = 100.0  # uncompressed total / archive size (JPEGs barely compress: ~1)

    def validate(self, where: str) -> None:
        _check(
            self.max_total_bytes > 0 and self.max_member_bytes > 0,
            f"{where}: max_total_bytes and max_member_bytes must be positive",
        )
        _check(self.max_ratio >= 1, f"{where}.max_ratio must be >= 1, found {self.max_ratio}")


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | path | url | kaggle
    path: Optional[str] = None  # folder or .zip/.tar.gz archive (source=path)
    url: Optional[str] = None  # HTTP(S) archive (source=url)
    sha256: Optional[str] = None  # expected sha256 of the downloaded archive (optional)
    download_dir: str = "data/download"  # where url/kaggle archives are kept for resumption
    kaggle_dataset: str = "paultimothymooney/chest-xray-pneumonia"
    link: bool = True  # path/kaggle: hardlink images into data/raw when possible (copy otherwise)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    timeout: float = 60.0  # url: seconds to connect, and the window over which min_rate is measured
    min_rate: int = 1024  # url: bytes/s averaged over `timeout` seconds below which a download is abandoned

    def validate(self, where: str) -> None:
        _check(
            self.source in SOURCES, f"{where}.source: unknown source {self.source!r}; expected one of {list(SOURCES)}"
        )
        if self.source == "path":
            _check(bool(self.path), f"{where}.path: source=path needs data.path (a folder or .zip/.tar.gz)")
        if self.source == "url":
            _check(bool(self.url), f"{where}.url: source=url needs data.url (an http(s) link to an archive)")
        _check(
            self.timeout > 0 and math.isfinite(self.timeout),
            f"{where}.timeout must be a positive number of seconds, found {self.timeout}",
        )
        _check(self.min_rate >= 0, f"{where}.min_rate must be >= 0 (0 = no minimum), found {self.min_rate}")


@dataclass
class Plausibility:
    """``split.plausibility``: what a chest radiograph cannot be. Quarantined at split, a warning at predict."""

    min_side: int = 32  # shorter side, pixels (the Kaggle images: 127 px and more)
    max_aspect: float = 4.0  # longer side / shorter side (chest films: about 0.5 to 2)
    min_range: int = 8  # grey levels between the 1st and 99th percentile (a blank or constant image has 0)
    min_smoothness: float = 0.5  # neighbouring-pixel correlation (radiographs: 0.88 and more; noise: 0 to 0.3)

    def validate(self, where: str) -> None:
        _check(self.min_side >= 1, f"{where}.min_side must be >= 1, found {self.min_side}")
        _check(self.max_aspect >= 1, f"{where}.max_aspect must be >= 1, found {self.max_aspect}")
        _check(0 <= self.min_range <= 255, f"{where}.min_range must be in [0, 255], found {self.min_range}")
        _check(-1 <= self.min_smoothness <= 1, f"{where}.min_smoothness must be in [-1, 1]")


@dataclass
class SplitConfig:
    val_fraction: float = 0.15  # of train patients, per class
    test_fraction: float = 0.15  # of train patients, used only when the source has no test split
    # The official 16-image val/ joins train before the draw; false: it stays val, added to the drawn val.
    merge_official_val: bool = True
    # The one pixel limit: split quarantines larger images, cxr predict and the served model refuse them.
    max_pixels: int = 50_000_000
    seed: int = 42
    workers: int = 0  # verification processes (hash + full decode); 0 = all cores
    plausibility: Plausibility = field(default_factory=Plausibility)

    def validate(self, where: str) -> None:
        _check(0 < self.val_fraction < 1, f"{where}.val_fraction must be in (0, 1), found {self.val_fraction}")
        _check(0 <= self.test_fraction < 1, f"{where}.test_fraction must be in [0, 1)")
        _check(self.val_fraction + self.test_fraction < 1, f"{where}: val_fraction + test_fraction must be < 1")
        _check(self.max_pixels > 0, f"{where}.max_pixels must be positive")
        _check(self.workers >= 0, f"{where}.workers must be >= 0, found {self.workers}")


@dataclass
class PreprocessConfig:
    cache_size: int = 96  # side of the square cache images, pixels
    # How the aspect ratio is handled: "stretch" resizes to cache_size x cache_size (as the
    # reference notebook's Resize((224, 224)) does); "pad" keeps it and pads with black.
    resize: str = "stretch"
    workers: int = 0  # decoding processes; 0 = all cores

    def validate(self, where: str) -> None:
        _check(16 <= self.cache_size <= 1024, f"{where}.cache_size must be in [16, 1024], found {self.cache_size}")
        _check(self.resize in ("stretch", "pad"), f"{where}.resize: expected 'stretch' or 'pad', found {self.resize!r}")
        _check(self.workers >= 0, f"{where}.workers must be >= 0")


EXTERNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a column name in dvc exp show and the results table
SYNTHETIC_SET = "synthetic"  # an external set given as this draws a synthetic cohort (external.synthetic)


@dataclass
class ExternalSynthetic:
    """``external.synthetic``: what a set given as ``synthetic`` draws: another cohort of data.synthetic's generator."""

    patients: int = 60
    pneumonia_ratio: float = 1.67  # PNEUMONIA : NORMAL, the official test split's balance (train: 2.9)
    seed: int = 1  # another seed than data.synthetic's: other children

    def validate(self, where: str) -> None:
        _check(self.patients >= 4, f"{where}.patients: need at least 4, found {self.patients}")
        _check(self.pneumonia_ratio > 0, f"{where}.pneumonia_ratio must be > 0, found {self.pneumonia_ratio}")


@dataclass
class ExternalConfig:
    """``external``: named external validation sets, evaluated for every model and never used for a choice."""

    sets: dict[str, str] = field(default_factory=dict)  # name -> folder or .zip/.tar.gz, or "synthetic"
    synthetic: ExternalSynthetic = field(default_factory=ExternalSynthetic)
    link: bool = True  # folders: hardlink the images into data/external when on one filesystem (else copy)
    # An external image whose 32x32 thumbnail correlates this much with one of the run's images is the
    # same picture (re-encoded or resized): refused. Kermany test vs train: at most 0.976; copies: 0.9998.
    max_similarity: float = 0.995

    def validate(self, where: str) -> None:
        for name, spec in self.sets.items():
            _check(
                bool(EXTERNAL_NAME.match(name)),
                f"{where}.sets: name {name!r} must be lower-case letters, digits and _ (a letter first, at most "
                "40 characters): it becomes a column name. E.g. kermany_a",
            )
            _check(bool(spec), f"{where}.sets.{name}: give a folder or .zip/.tar.gz, or {SYNTHETIC_SET!r}")
        _check(0 < self.max_similarity <= 1, f"{where}.max_similarity must be in (0, 1], found {self.max_similarity}")


MAX_BLUR_SIGMA = 8.0  # output pixels; the blur kernel spans 3 sigma either side
MAX_SHARPEN = 5.0  # unsharp-mask gain; more only amplifies noise


@dataclass
class AugmentConfig:
    """The reference notebook's augmentation table; every transform is drawn per image."""

    enabled: bool = True
    affine_degrees: float = 15.0  # RandomAffine rotation range, degrees
    affine_translate: float = 0.1  # RandomAffine translation, fraction of the side
    crop_scale: tuple[float, float] = (0.8, 1.0)  # RandomResizedCrop area fraction
    hflip_p: float = 0.5  # RandomHorizontalFlip probability
    rotation_degrees: float = 15.0  # RandomRotation range, degrees
    brightness: float = 0.2  # ColorJitter brightness
    contrast: float = 0.2  # ColorJitter contrast
    # ColorJitter saturation and hue do nothing to a grayscale X-ray, so they are not knobs here.
    # Intensity augmentations beyond the reference (defaults: off), for another scanner's exposure:
    gamma: tuple[float, float] = (1.0, 1.0)  # x ** gamma, gamma log-uniform in [low, high]
    blur_p: float = 0.0  # probability of a Gaussian blur
    blur_sigma: float = 1.0  # blurred images: sigma uniform in (0, blur_sigma], output pixels
    sharpen_p: float = 0.0  # probability of an unsharp mask, x + a * (x - blur(x)) with a blur of sigma 1 pixel
    sharpen_amount: float = 1.0  # sharpened images: a uniform in [0, sharpen_amount]
    noise_std: float = 0.0  # additive Gaussian noise, std uniform in [0, noise_std] (intensities in [0, 1])

    def validate(self, where: str) -> None:
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, f"{where}.crop_scale: need 0 < low <= high <= 1, found {self.crop_scale}")
        _check(0 <= self.hflip_p <= 1, f"{where}.hflip_p must be in [0, 1]")
        _check(0 <= self.affine_translate < 1, f"{where}.affine_translate must be in [0, 1)")
        _check(self.brightness >= 0 and self.contrast >= 0, f"{where}: brightness and contrast must be >= 0")
        g_lo, g_hi = self.gamma
        _check(0 < g_lo <= g_hi, f"{where}.gamma: need 0 < low <= high (1 = unchanged), found {self.gamma}")
        _check(0 <= self.blur_p <= 1, f"{where}.blur_p must be in [0, 1], found {self.blur_p}")
        _check(
            0 < self.blur_sigma <= MAX_BLUR_SIGMA,
            f"{where}.blur_sigma must be in (0, {MAX_BLUR_SIGMA}] output pixels, found {self.blur_sigma}",
        )
        _check(0 <= self.sharpen_p <= 1, f"{where}.sharpen_p must be in [0, 1], found {self.sharpen_p}")
        _check(
            0 < self.sharpen_amount <= MAX_SHARPEN,
            f"{where}.sharpen_amount must be in (0, {MAX_SHARPEN}], found {self.sharpen_amount}",
        )
        _check(0 <= self.noise_std <= 1, f"{where}.noise_std must be in [0, 1], found {self.noise_std}")


@dataclass
class ModelOverride:
    """Per-model overrides of the top-level knobs (train.models.<name>); None = use the global."""

    lr: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    image_size: Optional[int] = None
    scheduler: Optional[str] = None  # steplr | cosine | none
    pretrained: Optional[bool] = None
    weights: Optional[str] = None  # local torchvision state_dict file or save_pretrained directory
    # Keyword arguments of the model's builder (the registry lists them), e.g. vgg16 {batch_norm: true}
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        _check(
            self.lr is None or (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR),
            f"{where}.lr must be null or a finite number in (0, {MAX_LR}], found {self.lr}",
        )
        _check(
            self.scheduler in (None, *SCHEDULERS),
            f"{where}.scheduler: expected null, steplr, cosine or none, found {self.scheduler!r}",
        )


@dataclass
class TrainConfig:
    pretrained: bool = False  # global; train.models.<name>.pretrained overrides
    optimizer: str = "adamw"  # adamw | adam | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    scheduler: str = "steplr"  # steplr | cosine | none
    step_size: int = 5  # StepLR
    gamma: float = 0.5  # StepLR
    class_weight: str = "balanced"  # balanced (pos_weight = n_neg / n_pos) | none
    select_metric: str = "val_auc"  # val_auc | val_loss: which epoch's checkpoint is kept
    early_stopping_patience: int = 0  # epochs without improvement before stopping; 0 = off
    num_workers: int = 0  # DataLoader workers
    compile: bool = False  # torch.compile the model
    amp: bool = True  # mixed precision on CUDA (bf16 where supported)
    devices: Union[int, str] = 1  # 1 | N | auto (every visible GPU): N > 1 runs DDP under torchrun (gloo on CPU)
    freeze_backbone_epochs: int = 0  # pretrained models: train only the new head for the first N epochs
    backbone_lr_factor: float = 1.0  # pretrained models: backbone lr = lr * factor (the head gets lr)
    resume_every: float = 60.0  # seconds of training between resume states; 0 = after every epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, where: str) -> None:
        _check(
            self.optimizer in ("adamw", "adam", "sgd"),
            f"{where}.optimizer: expected adamw, adam or sgd, found {self.optimizer!r}",
        )
        _check(
            self.scheduler in SCHEDULERS,
            f"{where}.scheduler: expected steplr, cosine or none, found {self.scheduler!r}",
        )
        _check(
            self.class_weight in ("balanced", "none"),
            f"{where}.class_weight: expected balanced or none, found {self.class_weight!r}",
        )
        _check(
            self.select_metric in SELECT_METRICS,
            f"{where}.select_metric: expected {' or '.join(SELECT_METRICS)}, found {self.select_metric!r}",
        )
        _check(self.num_workers >= 0, f"{where}.num_workers must be >= 0")
        _check_devices(self.devices, f"{where}.devices")
        _check(self.freeze_backbone_epochs >= 0, f"{where}.freeze_backbone_epochs must be >= 0")
        _check(
            math.isfinite(self.resume_every) and self.resume_every >= 0,
            f"{where}.resume_every must be a number of seconds >= 0 (0: after every epoch), found {self.resume_every}",
        )
        _check(
            self.backbone_lr_factor > 0, f"{where}.backbone_lr_factor must be > 0 (freeze with freeze_backbone_epochs)"
        )


@dataclass
class MlflowConfig:
    experiment: str = "chest-xray-pneumonia"
    registered_model: str = "cxr-pneumonia"  # name in the Model Registry (compare registers the best)
    champion_alias: str = "champion"  # the registry alias of the model served and predicted by default
    log_model: bool = True  # train: also log each model with mlflow.pytorch.log_model (VGG16 ~ 0.5 GB)


MAX_LR = 10.0  # no optimiser here trains at a larger step; a typo such as 1e6 is refused before training
SCHEDULERS = ("steplr", "cosine", "none")  # train.scheduler, models.<name>.scheduler


@dataclass
class Globals:
    """Top-level knobs, kept top-level so `dvc exp run -S lr=1e-4 -S batch_size=16` reaches every model."""

    seed: int = 42
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 2
    image_size: int = 64

    def validate(self, where: str) -> None:
        _check(
            math.isfinite(self.lr) and 0 < self.lr <= MAX_LR,
            f"lr must be a finite number in (0, {MAX_LR}], found {self.lr}; e.g. -S lr=1e-4",
        )
        _check(self.batch_size >= 1, f"batch_size must be >= 1, found {self.batch_size}")
        _check(self.epochs >= 1, f"epochs must be >= 1, found {self.epochs}")
        _check(self.image_size >= 16, f"image_size must be >= 16, found {self.image_size}")


def load_globals(params: dict[str, Any]) -> Globals:
    keys = {f.name for f in dataclasses.fields(Globals)}
    return from_dict(Globals, {k: params[k] for k in keys if k in params}, "")


def load_model_override(params: dict[str, Any], model: str) -> ModelOverride:
    """``models.<name>`` of params.yaml: that model's overrides of the top-level knobs."""
    return from_dict(ModelOverride, (params.get("models") or {}).get(model) or {}, f"models.{model}")


@dataclass
class EvaluateConfig:
    """``evaluate``: the test split, touched once, with bootstrap confidence intervals."""

    threshold: str = "youden"  # youden | midpoint (both chosen on validation) | fixed
    fixed_threshold: float = 0.5  # threshold=fixed: this value; also the second reported operating point
    n_resamples: int = 1000  # bootstrap resamples for the confidence intervals
    confidence: float = 0.95
    seed: int = 0  # bootstrap and augmentation-figure draws
    batch_size: int = 64  # prediction batch size
    gallery_per_outcome: int = 4  # images per TP/TN/FP/FN row of the gallery
    gradcam: bool = True  # Grad-CAM overlays in the gallery
    augment_examples: int = 3  # rows of the original-vs-augmented figure
    augment_draws: int = 4  # augmented draws per row

    def validate(self, where: str) -> None:
        _check(
            self.threshold in THRESHOLD_METHODS,
            f"{where}.threshold: expected one of {list(THRESHOLD_METHODS)}, found {self.threshold!r}",
        )
        _check(0 < self.fixed_threshold < 1, f"{where}.fixed_threshold must be in (0, 1), found {self.fixed_threshold}")
        _check(self.n_resamples >= 10, f"{where}.n_resamples must be >= 10, found {self.n_resamples}")
        _check(0 < self.confidence < 1, f"{where}.confidence must be in (0, 1), found {self.confidence}")
        _check(self.batch_size >= 1, f"{where}.batch_size must be >= 1")
        _check(self.gallery_per_outcome >= 1, f"{where}.gallery_per_outcome must be >= 1")
        _check(
            self.augment_examples >= 1 and self.augment_draws >= 1,
            f"{where}: augment_examples and augment_draws must be >= 1",
        )


@dataclass
class SweepConfig:
    """``sweep``: batch_size x lr grid for one model, every configuration from a fresh initialisation."""

    model: str = "resnet50"
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 64])
    lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-2])
    epochs: int = 3
    image_size: Optional[int] = None  # None = the model's training image_size
    select_metric: str = "val_auc"  # val_auc (higher) | val_loss (lower); validation only, never test
    eval_batch_size: int = 64  # batch size of the (unused-for-selection) test predictions
    devices: Union[int, str] = "auto"  # processes, one device each: auto = every visible GPU (1 on CPU) | N

    def validate(self, where: str) -> None:
        _check_devices(self.devices, f"{where}.devices")
        _check(self.eval_batch_size >= 1, f"{where}.eval_batch_size: expected >= 1, found {self.eval_batch_size}")
        _check(
            len(self.batch_sizes) >= 1 and all(b >= 1 for b in self.batch_sizes),
            f"{where}.batch_sizes: need a non-empty list of positive integers, found {self.batch_sizes}",
        )
        _check(
            len(self.lrs) >= 1 and all(math.isfinite(lr) and 0 < lr <= MAX_LR for lr in self.lrs),
            f"{where}.lrs: need a non-empty list of finite numbers in (0, {MAX_LR}], found {self.lrs}",
        )
        _check(
            len(set(self.batch_sizes)) == len(self.batch_sizes) and len(set(self.lrs)) == len(self.lrs),
            f"{where}: batch_sizes and lrs must not repeat values",
        )
        _check(self.epochs >= 1, f"{where}.epochs must be >= 1, found {self.epochs}")
        _check(self.image_size is None or self.image_size >= 16, f"{where}.image_size must be >= 16 or null")
        _check(
            self.select_metric in SELECT_METRICS,
            f"{where}.select_metric: expected {' or '.join(SELECT_METRICS)}, found {self.select_metric!r}",
        )


@dataclass
class CompareConfig:
    """``compare``: results tables and figures; the best model (on validation) goes to the Model Registry."""

    select_metric: str = "val_auc"  # from metrics/train/<model>.json: val_auc (higher) | val_loss (lower)
    register: bool = True  # register the selected model under mlflow.registered_model (fails if MLflow is down)
    promote: str = "better"  # better: move the champion alias only to a better model on the same data | always
    bar_metrics: list[str] = field(
        default_factory=lambda: ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc"]
    )

    def validate(self, where: str) -> None:
        _check(
            self.select_metric in SELECT_METRICS,
            f"{where}.select_metric: expected {' or '.join(SELECT_METRICS)}, found {self.select_metric!r}",
        )
        _check(
            self.promote in ("better", "always"), f"{where}.promote: expected better or always, found {self.promote!r}"
        )
        bad = [m for m in self.bar_metrics if m not in CI_METRICS]
        _check(not bad, f"{where}.bar_metrics: unknown metric(s) {bad}; choose from {list(CI_METRICS)}")
