"""The training core: effective hyperparameters per model, and ``fit`` from a fresh initialisation.

    run_cfg = resolve_run_config(load_params("params.yaml"), "cnn")
    result = fit(run_cfg, (train_images, train_labels), (val_images, val_labels),
                 tracker=tracker, resume_path="data/resume/cnn.pt", data_version=info["data_version"])
    checkpoint.save("models/cnn", result.model, result.card)

Run by ``src/train.py`` (the ``train@<model>`` DVC stage) and, in-process, by the sweep. Every call
seeds, builds a new model and a new optimizer: nothing is carried over between calls. Validation
data choose the kept epoch (``select_metric``) and the decision threshold (Youden's J); test data
never reach this module.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from cxr.checkpoint import ModelCard, state_dict_copy
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
from cxr.data.augment import BatchAugment, Normalize, eval_resize
from cxr.device import amp_settings, resolve_device
from cxr.files import atomic_write
from cxr.metrics import THRESHOLD_METHODS, choose_threshold, row_is_better
from cxr.models import build_model, check_image_size, check_options, get_entry, input_spec, list_models
from cxr.tracking import NullTracker, param_value
from cxr.training import distributed
from cxr.training.engine import (
    TrainingDivergedError,
    batches_on_device,
    evaluate_loader,
    make_loader,
    stage_on_device,
    train_one_epoch,
)


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


@dataclass
class FitResult:
    model: nn.Module  # best epoch's weights loaded, eval mode
    history: list[dict]  # one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, val_auc, lr, seconds, ...
    # (seconds and train_images_per_s go to MLflow only: see src/train.py HISTORY_COLUMNS)
    best: dict  # best_epoch and its val_* metrics
    threshold: float  # chosen on the validation probabilities of the best model
    card: ModelCard  # for checkpoint.save
    val_probs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    val_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    def metrics(self) -> dict:
        """Flat final validation metrics (the train stage's DVC metrics file): a function of code,
        params, data and seed only, so a rerun writes the same bytes (timings: :meth:`timings`)."""
        return {
            **self.best,
            "threshold": self.threshold,
            **threshold_metrics(self.val_labels, self.val_probs, self.threshold),
            "epochs_run": len(self.history),
        }

    def timings(self) -> dict:
        """How long it took: for MLflow and the log, never for a DVC-tracked file (they differ every run)."""
        if not self.history:
            return {}
        return {
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in self.history])),
            "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in self.history])),
        }


def threshold_metrics(labels, probs, threshold: float) -> dict:
    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "val_sensitivity": float(sens),
        "val_specificity": float(spec),
        "val_balanced_accuracy": float((sens + spec) / 2),
        "val_acc_at_threshold": float((pred == labels).mean()),
    }


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffle/augmentation/dropout seed: a function of (seed, epoch) only, so a resumed run
    draws exactly what the uninterrupted run would have."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


def pos_weight(labels, class_weight: str) -> float:
    """'balanced': n_negative / n_positive, so both classes weigh the same in BCEWithLogitsLoss."""
    if class_weight == "none":
        return 1.0
    labels = np.asarray(labels)
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    return n_neg / n_pos if n_pos and n_neg else 1.0


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The fused kernels matter on CPU: the default per-parameter loop spends ~3 s per AdamW step on
    VGG16's 134 M parameters on 2 cores, the fused one ~0.1 s. Devices without them fall back."""
    params = list(params)
    classes = {
        "adamw": (torch.optim.AdamW, {}),
        "adam": (torch.optim.Adam, {}),
        "sgd": (torch.optim.SGD, {"momentum": cfg.momentum}),
    }
    if cfg.optimizer not in classes:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adamw, adam or sgd")
    cls, extra = classes[cfg.optimizer]
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def finetune_param_groups(cfg: RunConfig, model: nn.Module):
    """The head first (its lr is the one logged), then the backbone at ``lr * backbone_lr_factor``;
    plain ``model.parameters()`` when neither fine-tuning option is in use."""
    if cfg.freeze_backbone_epochs == 0 and cfg.backbone_lr_factor == 1.0:
        return model.parameters()
    from cxr.models.weights import split_parameters

    backbone, head = split_parameters(model, cfg.model)
    return [{"params": head, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_factor}]


def set_backbone_trainable(cfg: RunConfig, model: nn.Module, epoch: int) -> None:
    """Epochs 1..freeze_backbone_epochs train the head only (the backbone gets no gradient, so AdamW
    neither steps nor decays it); later epochs train everything."""
    if cfg.freeze_backbone_epochs == 0:
        return
    from cxr.models.weights import split_parameters

    backbone, _ = split_parameters(model, cfg.model)
    for p in backbone:
        p.requires_grad_(epoch > cfg.freeze_backbone_epochs)


def make_scheduler(cfg: RunConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "steplr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; expected steplr, cosine or none")


def config_hash(cfg: RunConfig, data_version: str, world_size: int = 1) -> str:
    # The world size shapes every batch, so a resume file is exact only for the same one.
    payload = {
        "run": asdict(cfg),
        "data_version": data_version,
        **({"world_size": world_size} if world_size > 1 else {}),
    }
    payload = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a list
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(_tuplify(state["python"])))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(
    run_cfg: RunConfig,
    train: tuple,
    val: tuple,
    *,
    device: str | torch.device | None = None,
    tracker: NullTracker | None = None,
    resume_path: str | Path | None = None,
    data_version: str = "",
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    threshold_method: str = "youden",
    fixed_threshold: float = 0.5,
    cache_resize: str = "stretch",
    resume_every: float = 0.0,
) -> FitResult:
    """Train ``run_cfg.model`` from a fresh initialisation on ``train`` = (uint8 images (N, S, S), labels),
    keep the best epoch on ``val`` by ``select_metric``, choose the threshold on ``val``.

    With ``resume_path``, a resume checkpoint is written after an epoch (never the last) once
    ``resume_every`` seconds of training have passed since the previous one (0: after every epoch;
    VGG16's state with its AdamW moments is 1.6 GB, seconds to write) and removed at the end; a
    matching one (same RunConfig and data_version) found at start continues from the next epoch.
    ``on_epoch_end(row)`` runs after that save (an exception there leaves a resumable state).
    ``threshold_method``/``fixed_threshold``: how the decision threshold saved with the model is
    chosen (the evaluate stage's ``evaluate.threshold``/``fixed_threshold``, so the operating point
    that evaluate reports is the one that predict and the served model use). ``cache_resize``: how
    the cache kept the aspect ratio, recorded in the card so predict prepares new images alike.
    The tracker, if given, receives the params and per-epoch metrics (step = epoch) of the active run.

    Under a torch.distributed process group (``src/train.py`` with ``train.devices`` > 1) every rank
    calls ``fit``: each trains on its slice of every global batch of ``batch_size`` images (DDP),
    and all get the same whole-split metrics; only rank 0 writes the resume file and shows progress
    (see ``cxr.training.distributed``).
    """
    cfg = run_cfg
    if threshold_method not in THRESHOLD_METHODS:  # before training, not after it
        raise ValueError(f"threshold_method: expected one of {list(THRESHOLD_METHODS)}, found {threshold_method!r}")
    if not 0 < fixed_threshold < 1:
        raise ValueError(f"fixed_threshold must be in (0, 1), found {fixed_threshold}")
    device = resolve_device(device)
    tracker = tracker or NullTracker()
    progress = progress and distributed.is_main()
    (x_tr, y_tr), (x_va, y_va) = train, val
    y_tr, y_va = np.asarray(y_tr, dtype=np.int64), np.asarray(y_va, dtype=np.int64)
    if threshold_method != "fixed" and len(np.unique(y_va)) < 2:  # before training, not after it
        raise ValueError(
            f"validation split has only class(es) {sorted(set(y_va.tolist()))}: the {threshold_method} threshold "
            "needs both. Fix: a larger split.val_fraction, or `-S evaluate.threshold=fixed`."
        )

    seed_everything(cfg.seed)
    spec = input_spec(cfg.model, cfg.weights)
    model = build_model(
        cfg.model, pretrained=cfg.pretrained, weights=cfg.weights, image_size=cfg.image_size, **cfg.options
    ).to(device)
    channels_last = device.type == "cuda" and get_entry(cfg.model).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = Normalize(spec["mean"], spec["std"], channels_last=channels_last)
    augment = BatchAugment(cfg.augment_config(), cfg.image_size)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight(y_tr, cfg.class_weight), device=device))
    optimizer = make_optimizer(cfg, finetune_param_groups(cfg, model))
    scheduler = make_scheduler(cfg, optimizer)
    amp_dtype, use_scaler = amp_settings(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    eval_model = torch.compile(model) if cfg.compile else model
    step_model = distributed.wrap(eval_model, device)  # DDP on several ranks, else eval_model
    if batches_on_device(device, cfg.num_workers):
        # Splits that fit go to the GPU once (uint8); batches are then indexed there, no host traffic.
        x_tr, x_va = stage_on_device(x_tr, device), stage_on_device(x_va, device)
    val_loader = make_loader(
        *distributed.shard(x_va, y_va),
        batch_size=cfg.batch_size,
        shuffle=False,
        device=device,
        num_workers=cfg.num_workers,
    )

    def resize(x):
        return eval_resize(x, cfg.image_size)

    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    bad_epochs, start_epoch = 0, 1
    key = config_hash(cfg, data_version, distributed.world_size())
    resume_path = Path(resume_path) if resume_path else None
    # Under DDP rank 0 reads it and sends it to the others (their nodes need not have the file).
    saved = distributed.load_from_main(resume_path) if resume_path is not None else None
    if saved is not None:
        if saved.get("config_hash") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            _set_rng_state(saved["rng"])
            history, best = saved["history"], saved["best"]
            best_state = saved["model"] if saved.get("best_is_current") else saved["best_state"]
            bad_epochs, start_epoch = saved["bad_epochs"], saved["epoch"] + 1
            if distributed.is_main():
                print(f"[{cfg.model}] resuming from {resume_path} after epoch {saved['epoch']}")
        elif distributed.is_main():
            print(f"[{cfg.model}] ignoring {resume_path}: written for other parameters or data; starting afresh")

    tracker.log_params(cfg.as_params())
    for row in history:  # a resumed run's new MLflow run gets the whole curve
        tracker.log_metrics(_metric_row(row), step=row["epoch"])
    stopped_early = bad_epochs >= cfg.early_stopping_patience > 0

    n_tr = len(y_tr)
    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        es = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(distributed.rank_seed(es))  # dropout draws
        gen = torch.Generator().manual_seed(distributed.rank_seed(es))
        # Several ranks: this rank's slice of every global batch of batch_size images.
        sampler = distributed.ShardedBatchSampler(n_tr, cfg.batch_size, seed=es) if distributed.active() else None
        # A trailing batch of one image would break BatchNorm in train mode: drop it.
        train_loader = make_loader(
            x_tr,
            y_tr,
            batch_size=sampler.batch_size if sampler else cfg.batch_size,
            shuffle=True,
            seed=es,
            device=device,
            num_workers=cfg.num_workers,
            drop_last=n_tr % cfg.batch_size == 1,
            batch_sampler=sampler,
        )
        lr = optimizer.param_groups[0]["lr"]
        set_backbone_trainable(cfg, model, epoch)
        t0 = time.perf_counter()
        try:
            tr = train_one_epoch(
                step_model,
                loss_fn,
                optimizer,
                train_loader,
                device,
                augment=functools.partial(augment, generator=gen),
                prep=norm,
                amp_dtype=amp_dtype,
                scaler=scaler,
                progress=progress,
                desc=f"{cfg.model} {epoch}/{cfg.epochs}",
            )
        except TrainingDivergedError as exc:  # before any evaluation or resume save of the broken weights
            raise TrainingDivergedError(f"[{cfg.model}] epoch {epoch}: {exc}", lr=exc.lr) from None
        tr = distributed.reduce_train_stats(tr)
        distributed.sync_buffers(model)
        ev = distributed.gather_eval(
            evaluate_loader(eval_model, loss_fn, val_loader, device, norm, resize=resize, amp_dtype=amp_dtype)
        )
        scheduler.step()
        row = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "val_loss": ev["loss"],
            "val_acc": ev["acc"],
            "val_auc": ev["auc"],
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "train_images_per_s": tr["images_per_s"],
        }
        history.append(row)
        tracker.log_metrics(_metric_row(row), step=epoch)
        if row_is_better(row, best, cfg.select_metric):
            best = {"best_epoch": epoch, "val_auc": ev["auc"], "val_loss": ev["loss"], "val_acc": ev["acc"]}
            best_state = state_dict_copy(model)
            bad_epochs = 0
        else:
            bad_epochs += 1
        if progress:
            print(
                f"[{cfg.model}] epoch {epoch}/{cfg.epochs} train_loss {tr['loss']:.4f} val_loss {ev['loss']:.4f} "
                f"val_auc {ev['auc']:.4f} ({row['seconds']:.1f} s, {tr['images_per_s']:.0f} img/s)"
            )
        stopped_early = bad_epochs >= cfg.early_stopping_patience > 0
        # After the last epoch a resume state would save nothing worth its cost (VGG16 with its AdamW
        # moments: 1.6 GB): a run interrupted from here on redoes the last epoch, to the same weights.
        last_epoch = epoch == cfg.epochs or stopped_early
        due = time.perf_counter() - last_save >= resume_every
        if resume_path is not None and distributed.is_main() and not last_epoch and due:
            current = state_dict_copy(model)
            # When this epoch is the best one, its weights are stored once (VGG16: 0.5 GB saved per epoch).
            best_is_current = best["best_epoch"] == epoch
            state = {
                "config_hash": key,
                "epoch": epoch,
                "model": current,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": _rng_state(),
                "history": history,
                "best": best,
                "best_is_current": best_is_current,
                "best_state": None if best_is_current else best_state,
                "bad_epochs": bad_epochs,
            }
            atomic_write(resume_path, functools.partial(torch.save, state))
            last_save = time.perf_counter()
        if on_epoch_end is not None:
            on_epoch_end(row)

    model.load_state_dict(best_state)
    model.eval()
    # In full precision, as evaluate and predict run: the stored threshold must be chosen on the
    # same probabilities that the evaluate stage reports and the served model produces.
    ev = distributed.gather_eval(
        evaluate_loader(model, loss_fn, val_loader, device, norm, resize=resize, amp_dtype=None)
    )
    threshold = choose_threshold(ev["labels"], ev["probs"], method=threshold_method, default=fixed_threshold)
    card = ModelCard(
        arch=model.arch,
        cache_size=int(np.shape(x_tr)[-1]),
        cache_resize=cache_resize,
        image_size=cfg.image_size,
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        threshold=float(threshold),
        threshold_method=threshold_method,
        data_version=data_version,
        train_params=asdict(cfg),
        augment=asdict(cfg.augment_config()),
        best_epoch=int(best["best_epoch"]),
        val_auc=float(best["val_auc"]),
        val_loss=float(best["val_loss"]),
        val_acc=float(best["val_acc"]),
        epochs_run=len(history),
        stopped_early=bool(stopped_early),
    )
    if resume_path is not None and resume_path.is_file() and distributed.is_main():
        resume_path.unlink()
    return FitResult(
        model=model,
        history=history,
        best=dict(best),
        threshold=threshold,
        card=card,
        val_probs=ev["probs"],
        val_labels=ev["labels"],
    )


def _metric_row(row: dict) -> dict:
    """An epoch's MLflow metrics (step = epoch). The scheduled learning rate is ``scheduled_lr``: ``lr``
    is the run's param, and one name for two things makes MLflow's compare view ambiguous."""
    return {("scheduled_lr" if k == "lr" else k): v for k, v in row.items() if k != "epoch"}
