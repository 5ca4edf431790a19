"""The effective hyperparameters of one training run: params.yaml's top-level knobs, ``train`` and the
model's ``models.<name>`` overrides, resolved into one frozen record (augmentation nested, as in
params.yaml and the model card).

    run_cfg = resolve_run_config(load_params("params.yaml"), "cnn")
    run_cfg.as_params()          # what MLflow logs: flat, the same keys for every model
    resolve_data_source(params)  # what the data was, for the model card (cxr.checkpoint.DataSource)
    TrainSettings.from_params(params, "cnn")  # all that decides cnn's checkpoint: resolved/train/cnn.json
    pretrained_weights(params)   # the models that train from pretrained weights: resolved/weights.json

The params stage writes the last two per run (``resolved/``); train@<model> and weights depend on those
files instead of on params.yaml's keys, so a stage reruns exactly when what it uses changes: vgg16, whose
``models.vgg16`` pins lr and batch_size, is not retrained by ``-S lr=1e-4 -S batch_size=16``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from cxr.config import (
    AugmentConfig,
    ConfigError,
    Globals,
    Scheduler,
    TrainConfig,
    check_top_level,
    load_globals,
    load_model_override,
    section,
)
from cxr.data.config import DataConfig
from cxr.metric_names import SelectMetric
from cxr.models import check_image_size, check_options, get_entry, list_models
from cxr.policy import ValidationPolicy
from cxr.schema import Section, parse

if TYPE_CHECKING:
    from cxr.checkpoint import DataSource


def param_value(value: Any) -> Any:
    """A run parameter as it is logged to MLflow, and compared with a model card's: None -> '', a
    mapping (models.<name>.options) -> its JSON; numbers and strings as they are."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


# A nested section of the run configuration -> the prefix of its keys among the flat MLflow params.
PARAM_PREFIXES = {"augment": "aug_"}


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The run configuration (nested, as a RunConfig or a model card holds it) as MLflow's flat params:
    ``augment.gamma`` -> ``aug_gamma_min`` and ``aug_gamma_max``, ``augment.hflip_p`` -> ``aug_hflip_p``,
    other values through :func:`param_value`. The one place the configuration is flattened."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        prefix = PARAM_PREFIXES.get(key)
        if prefix is None or not isinstance(value, Mapping):
            out[key] = param_value(value)
            continue
        for sub, v in value.items():
            if isinstance(v, (list, tuple)) and len(v) == 2:  # a (low, high) range
                out[f"{prefix}{sub}_min"], out[f"{prefix}{sub}_max"] = v
            else:
                out[f"{prefix}{sub}"] = param_value(v)
    return out


class RunConfig(Section):
    """The effective hyperparameters of one training run: the same keys for every model (MLflow compare
    lines them up). Frozen: :meth:`replace` makes a validated copy."""

    model_config = ConfigDict(frozen=True)

    model: str
    lr: float
    batch_size: int = Field(ge=1)
    epochs: int = Field(ge=1)
    image_size: int = Field(ge=16)
    seed: int
    pretrained: bool
    weights: str | None
    optimizer: Literal["adamw", "adam", "sgd"]
    momentum: float
    weight_decay: float
    scheduler: Scheduler
    step_size: int
    gamma: float
    class_weight: Literal["balanced", "none"]
    select_metric: SelectMetric
    early_stopping_patience: int
    num_workers: int
    compile: bool
    amp: bool
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    freeze_backbone_epochs: int = 0  # pretrained only: the head alone trains for these first epochs
    backbone_lr_factor: float = 1.0  # pretrained only: backbone lr = lr * factor
    options: dict[str, Any] = Field(default_factory=dict)  # the builder's keyword arguments

    def as_params(self) -> dict[str, Any]:
        """What MLflow logs (and a model card's train_params are compared with): flat str/number values."""
        return flat_params(self.model_dump())


def resolve_run_config(params: dict[str, Any], model: str) -> RunConfig:
    """Top-level knobs + ``train`` + ``models.<model>`` overrides -> RunConfig.

    Setting ``models.<name>.weights`` implies pretrained weights for that model unless
    ``models.<name>.pretrained`` is explicitly false.
    """
    get_entry(model)  # unknown names fail here, with the list of valid ones
    check_top_level(params)  # `-S +learning_rate=0.1` would otherwise train with the old lr
    unknown = sorted(set(params.get("models") or {}) - set(list_models()))
    if unknown:  # a misspelt section would otherwise be ignored without a word
        raise ConfigError(f"models: unknown model name(s) {unknown}; valid names are {list_models()}")
    g = load_globals(params)
    t: TrainConfig = section(params, "train", TrainConfig)
    o = load_model_override(params, model)
    overridden = {k: v for k, v in o.model_dump(include=set(Globals.model_fields)).items() if v is not None}
    eff = parse(Globals, {**g.model_dump(), **overridden}, f"models.{model}")
    check_image_size(model, eff.image_size, f"models.{model}.image_size" if o.image_size is not None else "image_size")
    if o.pretrained is not None:
        pretrained = o.pretrained
    else:  # the global switch reaches the models that have published weights (not the CNN)
        pretrained = True if o.weights else (t.pretrained and get_entry(model).pretrained_source is not None)
    own = {"pretrained", "scheduler", "freeze_backbone_epochs", "backbone_lr_factor"}  # resolved below
    shared = t.model_dump(include=set(RunConfig.model_fields) - own)
    return RunConfig(
        **shared,
        **eff.model_dump(),
        model=model,
        pretrained=pretrained,
        weights=(o.weights or None) if pretrained else None,
        scheduler=o.scheduler or t.scheduler,
        freeze_backbone_epochs=t.freeze_backbone_epochs if pretrained else 0,
        backbone_lr_factor=t.backbone_lr_factor if pretrained else 1.0,
        options=check_options(model, o.options, f"models.{model}.options"),
    )


def resolve_data_source(params: dict[str, Any], base_dir: Path | None = None) -> DataSource:
    """What params.yaml's ``data:`` says the training data was, for the model card. ``data.path`` is looked
    at as fetch looks at it (under ``base_dir``, default the working directory: the repository root under
    DVC; or ``$DVC_ROOT`` in a queued experiment), only to tell a folder from an archive. A stage that
    calls this declares the keys it reads as params: data.source, path, url, sha256, kaggle_dataset, synthetic.
    """
    from cxr.checkpoint import DataSource
    from cxr.data import SourceError
    from cxr.data.sources import resolve_path

    cfg: DataConfig = section(params, "data", DataConfig)
    is_dir = None
    if cfg.source == "path":
        try:
            is_dir = resolve_path(cfg.path, Path.cwd() if base_dir is None else base_dir).is_dir()
        except SourceError:  # gone since fetch: the card says "path", not a guess
            is_dir = None
    return DataSource.from_config(cfg, path_is_dir=is_dir)


class TrainSettings(Section):
    """Everything that decides train@<model>'s checkpoint: the run configuration (the model's overrides applied),
    the policy of the choices made on validation and saved with the model (:class:`cxr.policy.ValidationPolicy`:
    temperature, threshold rule, refer band, operating points), the number of
    processes (DDP shards each batch) and what the data was (the model card's). Not here: where MLflow logs
    (``mlflow``), how often a resume state is written (``train.resume_every``), figures: none of them change
    the checkpoint. Serialised (:meth:`to_json`) as the train stage's dependency."""

    model_config = ConfigDict(frozen=True)

    run: RunConfig
    devices: int | str
    policy: ValidationPolicy
    data_source: dict[str, Any]

    @classmethod
    def from_params(cls, params: dict[str, Any], model: str) -> TrainSettings:
        import dataclasses

        t: TrainConfig = section(params, "train", TrainConfig)
        return cls(
            run=resolve_run_config(params, model),
            devices=t.devices,
            policy=ValidationPolicy.from_params(params),
            data_source=dataclasses.asdict(resolve_data_source(params)),
        )

    def fit_options(self) -> dict[str, Any]:
        """fit's keyword arguments that come from these settings: the policy and what the data was."""
        from cxr.checkpoint import DataSource

        return {"policy": self.policy, "data_source": DataSource.from_dict(self.data_source)}

    def to_json(self) -> str:
        """The bytes of resolved/train/<model>.json: they change only when these settings do."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> TrainSettings:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf8")))


def pretrained_weights(params: dict[str, Any]) -> dict[str, str | None]:
    """Models that train from pretrained weights -> their local weights path (None: the published ones)."""
    t: TrainConfig = section(params, "train", TrainConfig)
    overrides = [load_model_override(params, m) for m in params.get("models") or {}]
    if not t.pretrained and not any(o.pretrained or o.weights for o in overrides):
        return {}  # the common case, certain from params.yaml alone
    out = {}
    for name in list_models():
        cfg = resolve_run_config(params, name)
        if cfg.pretrained:
            out[name] = cfg.weights
    return out
