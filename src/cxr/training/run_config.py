"""The effective hyperparameters of one training run: params.yaml's top-level knobs, ``train`` and the
model's ``models.<name>`` overrides, resolved into one flat, frozen-by-convention record.

    run_cfg = resolve_run_config(load_params("params.yaml"), "cnn")
    run_cfg.as_params()          # what MLflow logs: the same keys for every model
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Optional

from cxr.config import (
    AugmentConfig,
    ConfigError,
    Globals,
    TrainConfig,
    check_top_level,
    load_globals,
    load_model_override,
    section,
)
from cxr.models import check_image_size, check_options, get_entry, list_models
from cxr.tracking import param_value


@dataclass
class RunConfig:
    """The effective hyperparameters of one training run: the same keys for every model (MLflow compare
    lines them up)."""

    model: str
    lr: float
    batch_size: int
    epochs: int
    image_size: int
    seed: int
    pretrained: bool
    weights: Optional[str]
    optimizer: str
    momentum: float
    weight_decay: float
    scheduler: str
    step_size: int
    gamma: float
    class_weight: str
    select_metric: str
    early_stopping_patience: int
    num_workers: int
    compile: bool
    amp: bool
    aug_enabled: bool
    aug_affine_degrees: float
    aug_affine_translate: float
    aug_crop_scale_min: float
    aug_crop_scale_max: float
    aug_hflip_p: float
    aug_rotation_degrees: float
    aug_brightness: float
    aug_contrast: float
    aug_gamma_min: float = 1.0
    aug_gamma_max: float = 1.0
    aug_blur_p: float = 0.0
    aug_blur_sigma: float = 1.0
    aug_sharpen_p: float = 0.0
    aug_sharpen_amount: float = 1.0
    aug_noise_std: float = 0.0
    freeze_backbone_epochs: int = 0  # pretrained only: the head alone trains for these first epochs
    backbone_lr_factor: float = 1.0  # pretrained only: backbone lr = lr * factor
    options: dict = field(default_factory=dict)  # the builder's keyword arguments (models.<name>.options)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(
            enabled=self.aug_enabled,
            affine_degrees=self.aug_affine_degrees,
            affine_translate=self.aug_affine_translate,
            crop_scale=(self.aug_crop_scale_min, self.aug_crop_scale_max),
            hflip_p=self.aug_hflip_p,
            rotation_degrees=self.aug_rotation_degrees,
            brightness=self.aug_brightness,
            contrast=self.aug_contrast,
            gamma=(self.aug_gamma_min, self.aug_gamma_max),
            blur_p=self.aug_blur_p,
            blur_sigma=self.aug_blur_sigma,
            sharpen_p=self.aug_sharpen_p,
            sharpen_amount=self.aug_sharpen_amount,
            noise_std=self.aug_noise_std,
        )

    def as_params(self) -> dict:
        """Flat str/number dict for MLflow params (None -> '', a mapping -> its JSON)."""
        return {k: param_value(v) for k, v in asdict(self).items()}

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def resolve_run_config(params: dict, model: str) -> RunConfig:
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
    eff = Globals(
        seed=g.seed,
        lr=o.lr if o.lr is not None else g.lr,
        batch_size=o.batch_size if o.batch_size is not None else g.batch_size,
        epochs=o.epochs if o.epochs is not None else g.epochs,
        image_size=o.image_size if o.image_size is not None else g.image_size,
    )
    eff.validate(f"models.{model}")
    check_image_size(model, eff.image_size, f"models.{model}.image_size" if o.image_size is not None else "image_size")
    if o.pretrained is not None:
        pretrained = o.pretrained
    else:  # the global switch reaches the models that have published weights (not the CNN)
        pretrained = True if o.weights else (t.pretrained and get_entry(model).pretrained_source is not None)
    a = t.augment
    return RunConfig(
        model=model,
        lr=eff.lr,
        batch_size=eff.batch_size,
        epochs=eff.epochs,
        image_size=eff.image_size,
        seed=eff.seed,
        pretrained=pretrained,
        weights=(o.weights or None) if pretrained else None,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        scheduler=o.scheduler or t.scheduler,
        step_size=t.step_size,
        gamma=t.gamma,
        class_weight=t.class_weight,
        select_metric=t.select_metric,
        early_stopping_patience=t.early_stopping_patience,
        num_workers=t.num_workers,
        compile=t.compile,
        amp=t.amp,
        aug_enabled=a.enabled,
        aug_affine_degrees=a.affine_degrees,
        aug_affine_translate=a.affine_translate,
        aug_crop_scale_min=float(a.crop_scale[0]),
        aug_crop_scale_max=float(a.crop_scale[1]),
        aug_hflip_p=a.hflip_p,
        aug_rotation_degrees=a.rotation_degrees,
        aug_brightness=a.brightness,
        aug_contrast=a.contrast,
        aug_gamma_min=float(a.gamma[0]),
        aug_gamma_max=float(a.gamma[1]),
        aug_blur_p=a.blur_p,
        aug_blur_sigma=a.blur_sigma,
        aug_sharpen_p=a.sharpen_p,
        aug_sharpen_amount=a.sharpen_amount,
        aug_noise_std=a.noise_std,
        freeze_backbone_epochs=t.freeze_backbone_epochs if pretrained else 0,
        backbone_lr_factor=t.backbone_lr_factor if pretrained else 1.0,
        options=check_options(model, o.options, f"models.{model}.options"),
    )
