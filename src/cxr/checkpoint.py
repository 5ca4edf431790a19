"""A trained model: ``model.pt`` (a state_dict) + ``model.json`` (its :class:`ModelCard`).

    checkpoint.save("models/cnn", model, card)     # card: FitResult.card from cxr.training.fit
    model, card = checkpoint.load("models/cnn")    # rebuilt with pretrained=False, weights_only=True load
    card.threshold, card.image_size, card.mean     # typed fields, the one contract between stages

Nothing is pickled. The card names the architecture (registry name, image size, builder options),
the preprocessing (cache size and resize mode, input size, normalisation), the decision threshold
and the method that chose it on validation, the data version and the data's source
(:class:`DataSource`: synthetic, a folder, an archive, a URL), the training parameters, the kept
epoch's validation metrics and the library versions. Train writes it once; evaluate, predict,
serving, explain and compare read its fields. :func:`ModelCard.from_json` reads every format
written so far: old keys are upgraded in :func:`_upgrade`, nowhere else.

Both files are DVC outputs, so they hold nothing that changes between two runs of the same code,
params, data and seed: no MLflow run id, git commit, host or timing (those are MLflow tags), and
``model.pt`` is written through a file object, so its zip records are not named after the random
temporary file (``torch.save(obj, path)`` names them after ``path``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr import CLASSES
from cxr.calibration import apply_temperature
from cxr.config import AugmentConfig
from cxr.data.config import RESIZE_MODES
from cxr.data_source import DATA_KINDS, DataSource, SyntheticDataWarning, public_url, synthetic_data_warning
from cxr.files import atomic_write
from cxr.models import rebuild
from cxr.models.state_file import mismatch, read_state_dict

# What the data was lives in cxr.data_source; these names stay importable from here, beside the card that holds it.
__all__ = ["DATA_KINDS", "DataSource", "SyntheticDataWarning", "public_url", "synthetic_data_warning"]

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
# 1: the flat dict of the first releases; 2: train_params flat (aug_*) beside an `augment` copy;
# 3: train_params nested as params.yaml (augment one mapping); 4: data_source (what the data was);
# 5: temperature and its calibration record, the refer band; 6: validation (the policy that made the choices on
# validation, the operating points' thresholds). Older ones are upgraded on read.
FORMAT_VERSION = 6


# The answer for an image inside the card's refer band: neither class, a person looks.
REFER = "REFER"


class CheckpointError(ValueError):
    """A model folder that cannot be used: a model.json that is not a card, a model.pt that is not its weights."""


def _fix(source: str | Path) -> str:
    """The fix for a damaged model folder ``models/<name>``: train (or pull) it again."""
    return f"rewrite it with `dvc repro train@{Path(source).parent.name}` (or `dvc pull`), or use another model"


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, use and describe a trained model. Frozen: written once, by train."""

    arch: dict[str, Any]  # {"name", "image_size", "options"}: cxr.models.rebuild(arch)
    cache_size: int  # side of the cached uint8 images it was trained on
    cache_resize: str  # how the cache kept the aspect ratio: stretch | pad (predict must do the same)
    image_size: int  # model input side
    mean: tuple[float, ...]  # normalisation of the weights, per channel
    std: tuple[float, ...]
    threshold: float  # P(pneumonia) >= threshold -> PNEUMONIA
    threshold_method: str  # youden | fixed: how the threshold was chosen on validation
    data_version: str
    train_params: dict[str, Any]  # the RunConfig of the run, nested (augment: the AugmentConfig it trained with)
    best_epoch: int
    val_auc: float
    val_loss: float
    val_acc: float
    epochs_run: int
    stopped_early: bool
    classes: tuple[str, ...] = CLASSES
    library_versions: dict[str, Any] = field(default_factory=dict)
    data_source: DataSource = field(default_factory=DataSource)  # what data_version was (kind unknown: not recorded)
    # P(pneumonia) = sigmoid(logit / temperature) (cxr.calibration; 1.0 = none, as every card before format 5).
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)  # how it was decided on validation (train.calibrate)
    # (low, high) on the calibrated probability: low <= p < high -> REFER (None: no band, every image decided).
    refer_band: tuple[float, float] | None = None
    refer: dict[str, Any] = field(default_factory=dict)  # how the band was chosen on validation (cxr.abstention)
    # The rest of cxr.policy.ValidationChoices: the policy (params) and the operating points' thresholds.
    validation: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def name(self) -> str:
        """The registry name of the architecture (cnn, resnet50, ...)."""
        return str(self.arch["name"])

    def augment_config(self) -> AugmentConfig:
        augment = self.train_params.get("augment") or {}
        return AugmentConfig.model_validate({k: v for k, v in augment.items() if k in AugmentConfig.model_fields})

    def calibrate(self, probs: Any) -> Any:
        """The card's temperature applied to raw P(pneumonia) (an array): the probabilities it reports."""
        return apply_temperature(probs, self.temperature)

    def label(self, probability: float) -> str:
        """The answer for a calibrated probability: REFER inside the refer band, else the class at the threshold."""
        if self.refer_band is not None and self.refer_band[0] <= probability < self.refer_band[1]:
            return REFER
        return self.classes[1] if probability >= self.threshold else self.classes[0]

    def operating_points(self) -> list[dict[str, Any]]:
        """The operating points chosen on validation (cxr.policy.operating_threshold reads one by name)."""
        return list(self.validation.get("operating_points") or [])

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, indent=2, default=_json_default) + "\n"

    @classmethod
    def from_json(cls, text: str | dict[str, Any], source: str = "model.json") -> ModelCard:
        """The card in ``text`` (model.json's text or its dict), upgraded and checked (:func:`check_card`)."""
        try:
            raw = json.loads(text) if isinstance(text, str) else text
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source} is not valid JSON ({exc}): {_fix(source)}") from None
        if not isinstance(raw, dict):
            kind = "array" if isinstance(raw, list) else type(raw).__name__
            raise CheckpointError(f"{source} holds a JSON {kind}, expected an object (a model card): {_fix(source)}")
        try:
            card = cls._from_dict(_upgrade(dict(raw), source), source)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"{source} is not a model card ({type(exc).__name__}: {exc}): {_fix(source)}"
            ) from None
        check_card(card, source)
        return card

    @classmethod
    def _from_dict(cls, data: dict[str, Any], source: str) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise CheckpointError(
                f"{source} lacks {missing}: expected a model card written by the train stage "
                f"(run `dvc repro train` to rewrite it)"
            )
        data = {k: v for k, v in data.items() if k in known}  # keys of newer formats are ignored, not fatal
        for k in ("mean", "std", "classes"):
            data[k] = tuple(data[k]) if k in data else None
        band = data.get("refer_band")
        data["refer_band"] = None if band is None else (_number(band[0]), _number(band[1]))
        if data.get("classes") is None:
            data.pop("classes")
        data["temperature"] = _number(data.get("temperature", 1.0))
        if "threshold" in data:
            data["threshold"] = _number(data["threshold"])
        if isinstance(data.get("data_source"), dict):
            data["data_source"] = DataSource.from_dict(data["data_source"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"{source} is not a model card: {exc}") from exc


def _number(value: Any) -> Any:
    """``value`` as a float when it is a number; anything else is left for :func:`check_card` to name."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _size_problem(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or value < 1


def _fraction_problem(value: Any) -> bool:
    return not isinstance(value, float) or not math.isfinite(value) or not 0.0 <= value <= 1.0


def _card_problems(card: ModelCard) -> list[str]:
    """What in ``card`` predict cannot use: each ``<key> is <value>, expected <what>``."""
    found: list[str] = []

    def bad(key: str, value: Any, expected: str) -> None:
        found.append(f"{key} is {value!r}, expected {expected}")

    arch = card.arch if isinstance(card.arch, dict) else {}
    if not isinstance(card.arch, dict) or not isinstance(arch.get("name"), str):
        bad("arch", card.arch, "a mapping with the registry name of the model")
    for key, value in (("cache_size", card.cache_size), ("image_size", card.image_size)):
        if _size_problem(value):
            bad(key, value, "an integer >= 1")
    if "image_size" in arch and _size_problem(arch["image_size"]):
        bad("arch.image_size", arch["image_size"], "an integer >= 1")
    if card.cache_resize not in RESIZE_MODES:
        bad("cache_resize", card.cache_resize, f"one of {list(RESIZE_MODES)}")
    if _fraction_problem(card.threshold):
        bad("threshold", card.threshold, "a number in [0, 1]")
    if not isinstance(card.temperature, float) or not math.isfinite(card.temperature) or card.temperature <= 0:
        bad("temperature", card.temperature, "a finite number > 0")
    for key, values in (("mean", card.mean), ("std", card.std)):
        numbers = [_number(v) for v in values or ()]
        if not numbers or not all(isinstance(v, float) and math.isfinite(v) for v in numbers):
            bad(key, values, "finite numbers, one per channel")
        elif key == "std" and min(numbers) <= 0:
            bad(key, values, "numbers > 0")
    band = card.refer_band  # high may lie just above 1 (cxr.abstention.band_at), so that p = 1 is inside
    if band is not None:
        finite = all(isinstance(v, float) and math.isfinite(v) for v in band)
        if not finite or not 0 <= band[0] <= band[1]:
            bad("refer_band", band, "null or [low, high], finite, with 0 <= low <= high")
    if len(card.classes) != 2 or not all(isinstance(c, str) for c in card.classes):
        bad("classes", card.classes, "two class names")
    return found


def check_card(card: ModelCard, source: str) -> None:
    """Refuse, when the card is read, the values predict relies on that it cannot use: a NaN threshold
    or a negative cache size would otherwise fail every image later as 'corrupt or truncated'."""
    found = _card_problems(card)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CheckpointError(f"{source}: {found[0]}{more}; the card is damaged or was edited: {_fix(source)}")


def _upgrade(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Old formats -> the current field names. The one place that knows the history."""
    version = int(d.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has format_version {version}, newer than this code reads "
            f"({FORMAT_VERSION}); update the cxr package"
        )
    if version == 1:
        d = dict(d)
        d.pop("git_commit", None)
        # v1 kept the cache's resize mode under several names; "resize" was prose in later v1 files.
        mode = next(
            (d[k] for k in ("cache_resize", "preprocess_resize", "resize") if d.get(k) in RESIZE_MODES), "stretch"
        )
        d["cache_resize"] = mode
        # v1 wrote "youden on validation"; the method is the first word.
        d["threshold_method"] = str(d.get("threshold_method", "youden")).split()[0]
        params = d.get("train_params") or {}
        d.setdefault(
            "augment",
            {
                "enabled": params.get("aug_enabled", True),
                "affine_degrees": params.get("aug_affine_degrees", 15),
                "affine_translate": params.get("aug_affine_translate", 0.1),
                "crop_scale": [params.get("aug_crop_scale_min", 0.8), params.get("aug_crop_scale_max", 1.0)],
                "hflip_p": params.get("aug_hflip_p", 0.5),
                "rotation_degrees": params.get("aug_rotation_degrees", 15),
                "brightness": params.get("aug_brightness", 0.2),
                "contrast": params.get("aug_contrast", 0.2),
            },
        )
        if "arch" not in d and d.get("model"):
            d["arch"] = {"name": d["model"], "image_size": d.get("image_size", 224), "options": {}}
        d.setdefault("epochs_run", 0)
        d.setdefault("stopped_early", False)
    if version < 3:  # the aug_* keys of train_params into the one augment mapping
        d = dict(d)
        params = {k: v for k, v in (d.get("train_params") or {}).items() if not k.startswith("aug_")}
        d["train_params"] = {**params, "augment": d.pop("augment", {})}
    if version < 4:  # no record of the data: said so, never guessed (the default run was synthetic, not every run)
        d = dict(d)
        d["data_source"] = dataclasses.asdict(DataSource("unknown"))
    if version < 5:  # no calibration and no refer band: the probabilities as the model gave them, all decided
        d = {**d, "temperature": 1.0, "calibration": {}, "refer_band": None, "refer": {}}
    if version < 6:  # no operating points recorded
        d = {**d, "validation": {}}
    d["format_version"] = FORMAT_VERSION
    return d


def library_versions() -> dict[str, Any]:
    import numpy
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:  # the installed version, without importing it (2 s of every train stage that never used it)
        versions["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pass
    return versions


def state_dict_copy(model: nn.Module) -> dict[str, Any]:
    """A CPU copy of the state_dict (never a view of the live weights), without the ``_orig_mod.``
    prefix torch.compile adds, so it loads into a plain model."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save(model_dir: str | Path, model: nn.Module, card: ModelCard) -> Path:
    """Write model_dir/model.pt and model_dir/model.json (the card, with provenance filled in)."""
    model_dir = Path(model_dir)
    card = dataclasses.replace(card, library_versions=card.library_versions or library_versions())
    atomic_write(model_dir / WEIGHTS_FILE, lambda p: _save_state(state_dict_copy(model), p))
    atomic_write(model_dir / META_FILE, lambda p: Path(p).write_text(card.to_json()))
    return model_dir


def _save_state(state: dict[str, Any], path: str) -> None:
    # Through a file object: the archive's records are then named "archive/...", not after ``path``.
    with open(path, "wb") as f:
        torch.save(state, f)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no model card at {path}; expected a folder written by cxr.checkpoint.save "
            f"(run `dvc repro train` to create models/<name>)"
        )
    return ModelCard.from_json(path.read_text(), source=str(path))


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the architecture (random init, no downloads) and load the weights with ``weights_only=True``;
    CheckpointError, one line naming the file and the fix, for weights that are unreadable or do not fit."""
    card = load_card(model_dir)
    path = Path(model_dir) / WEIGHTS_FILE
    state = read_state_dict(path, _fix(path), CheckpointError)
    # Built on the meta device, the weights then assigned: a random initialisation the saved weights
    # replace anyway costs VGG16 (138 M weights) 2.5 s and the ViT 3 s of every evaluate stage.
    with torch.device("meta"):
        model = rebuild(card.arch)
    why = mismatch(model.state_dict(), state)
    if why:
        raise CheckpointError(f"{path}: the weights do not fit the architecture of {META_FILE} ({why}): {_fix(path)}")
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # A buffer the state dict does not hold (non-persistent): only a real build makes it.
        model = rebuild(card.arch)
        model.load_state_dict(state)
    return model.to(device).eval(), card
