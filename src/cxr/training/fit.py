"""The training core: effective hyperparameters per model, and ``fit`` from a fresh initialisation.

    run_cfg = resolve_run_config(load_params("params.yaml"), "cnn")
    result = fit(run_cfg, (train_images, train_labels), (val_images, val_labels),
                 tracker=tracker, resume_path="data/resume/cnn.pt", data_version=info["data_version"])
    checkpoint.save("models/cnn", result.model, result.card)

Run by ``src/train.py`` (the ``train@<model>`` DVC stage) and, in-process, by the sweep. Every call
seeds, builds a new model and a new optimizer: nothing is carried over between calls. Validation
data choose the kept epoch (``select_metric``) and, through a :class:`cxr.policy.ValidationPolicy`, the
temperature, threshold, refer band and operating points; test data never reach this module.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from cxr.checkpoint import DataSource, ModelCard, state_dict_copy
from cxr.data.augment import BatchAugment, Normalize, eval_resize
from cxr.device import amp_settings, resolve_device
from cxr.metrics import row_is_better
from cxr.models import build_model, get_entry, input_spec, model_arch
from cxr.policy import ValidationPolicy
from cxr.tracking import NullTracker, Tracker
from cxr.training import distributed
from cxr.training.engine import TrainingDivergedError, evaluate_loader, train_one_epoch
from cxr.training.loaders import batches_on_device, make_loader, stage_on_device
from cxr.training.optim import finetune_param_groups, make_optimizer, make_scheduler, set_backbone_trainable
from cxr.training.resume import Progress, ResumeState, config_hash
from cxr.training.run_config import RunConfig


@dataclass
class FitResult:
    model: nn.Module  # best epoch's weights loaded, eval mode
    history: list[dict]  # one row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, val_auc, lr, seconds, ...
    # (seconds and train_images_per_s go to MLflow only: see cxr.files.HISTORY_COLUMNS)
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
            "temperature": self.card.temperature,
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


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(
    run_cfg: RunConfig,
    train: tuple,
    val: tuple,
    policy: ValidationPolicy | None = None,
    *,
    device: str | torch.device | None = None,
    tracker: Tracker | None = None,
    resume_path: str | Path | None = None,
    data_version: str = "",
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    cache_resize: str = "stretch",
    resume_every: float = 0.0,
    data_source: DataSource | None = None,
) -> FitResult:
    """Train ``run_cfg.model`` from a fresh initialisation on ``train`` = (uint8 images (N, S, S), labels),
    keep the best epoch on ``val`` by ``select_metric``, then make ``policy``'s choices on ``val``
    (:class:`cxr.policy.ValidationPolicy`: temperature, threshold, refer band, operating points; default: a
    Youden threshold and nothing else), on the probabilities evaluate and predict see; all go in the card.

    With ``resume_path``, a resume state (:class:`cxr.training.resume.ResumeState`) is written after an
    epoch (never the last) once ``resume_every`` seconds of training have passed since the previous one
    (0: after every epoch; VGG16's state with its AdamW moments is 1.6 GB, seconds to write) and removed
    at the end; a matching one (same RunConfig and data_version) found at start continues from the
    next epoch. ``on_epoch_end(row)`` runs after that save (an exception there leaves a resumable
    state). ``cache_resize``: how
    the cache kept the aspect ratio, recorded in the card so predict prepares new images alike.
    ``data_source``: what the data was (synthetic, a folder, ...), recorded in the card as it is
    (None: recorded as unknown).
    The tracker, if given, receives the params and per-epoch metrics (step = epoch) of the active run.

    Under a torch.distributed process group (``src/train.py`` with ``train.devices`` > 1) every rank
    calls ``fit``: each trains on its slice of every global batch of ``batch_size`` images (DDP),
    and all get the same whole-split metrics; only rank 0 writes the resume file and shows progress
    (see ``cxr.training.distributed``).
    """
    cfg = run_cfg
    policy = policy if policy is not None else ValidationPolicy()
    policy.check(val[1])
    tracker = tracker if tracker is not None else NullTracker()
    progress = progress and distributed.is_main()
    t = _Training.build(cfg, train, val, resolve_device(device))
    resume = ResumeState(
        resume_path, config_hash(cfg, data_version, distributed.world_size()), every=resume_every, name=cfg.model
    )
    state = resume.restore(t.model, t.optimizer, t.scheduler, t.scaler)
    tracker.log_params(cfg.as_params())
    for row in state.history:  # a resumed run's new MLflow run gets the whole curve
        tracker.log_metrics(epoch_metrics(row), step=row["epoch"])
    stopped_early = state.bad_epochs >= cfg.early_stopping_patience > 0
    for epoch in range(state.start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        row = t.run_epoch(epoch, progress)
        state.history.append(row)
        tracker.log_metrics(epoch_metrics(row), step=epoch)
        _keep_if_better(state, row, t.model, cfg.select_metric)
        if progress:
            print(
                f"[{cfg.model}] epoch {epoch}/{cfg.epochs} train_loss {row['train_loss']:.4f} "
                f"val_loss {row['val_loss']:.4f} val_auc {row['val_auc']:.4f} "
                f"({row['seconds']:.1f} s, {row['train_images_per_s']:.0f} img/s)"
            )
        stopped_early = state.bad_epochs >= cfg.early_stopping_patience > 0
        # After the last epoch a resume state would save nothing worth its cost (VGG16 with its AdamW
        # moments: 1.6 GB): a run interrupted from here on redoes the last epoch, to the same weights.
        last_epoch = epoch == cfg.epochs or stopped_early
        resume.save_if_due(epoch, state, t.model, t.optimizer, t.scheduler, t.scaler, last_epoch=last_epoch)
        if on_epoch_end is not None:
            on_epoch_end(row)
    result = t.finish(state, policy, data_version, cache_resize, stopped_early, data_source or DataSource())
    resume.remove()
    return result


def _keep_if_better(state: Progress, row: dict, model: nn.Module, select_metric: str) -> None:
    if row_is_better(row, state.best, select_metric):
        state.best = {
            "best_epoch": row["epoch"],
            "val_auc": row["val_auc"],
            "val_loss": row["val_loss"],
            "val_acc": row["val_acc"],
        }
        state.best_state = state_dict_copy(model)
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1


@dataclass
class _Training:
    """Everything one ``fit`` call builds once: the model, its input pipeline, loss, optimizer, loaders."""

    cfg: RunConfig
    device: torch.device
    model: nn.Module
    spec: dict
    norm: Normalize
    augment: BatchAugment
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    eval_model: nn.Module
    step_model: nn.Module
    x_tr: Any  # uint8 images (N, S, S): a memory map, an array, or a tensor staged on the device
    y_tr: np.ndarray
    val_loader: Any

    @classmethod
    def build(cls, cfg: RunConfig, train: tuple, val: tuple, device: torch.device) -> _Training:
        (x_tr, y_tr), (x_va, y_va) = train, val
        y_tr, y_va = np.asarray(y_tr, dtype=np.int64), np.asarray(y_va, dtype=np.int64)
        seed_everything(cfg.seed)
        spec = input_spec(cfg.model, cfg.weights)
        model = build_model(
            cfg.model, pretrained=cfg.pretrained, weights=cfg.weights, image_size=cfg.image_size, **cfg.options
        ).to(device)
        channels_last = device.type == "cuda" and get_entry(cfg.model).channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight(y_tr, cfg.class_weight), device=device))
        optimizer = make_optimizer(cfg, finetune_param_groups(cfg, model))
        amp_dtype, use_scaler = amp_settings(device, cfg.amp)
        eval_model = cast(nn.Module, torch.compile(model)) if cfg.compile else model
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
        return cls(
            cfg=cfg,
            device=device,
            model=model,
            spec=spec,
            norm=Normalize(spec["mean"], spec["std"], channels_last=channels_last),
            augment=BatchAugment(cfg.augment, cfg.image_size),
            loss_fn=loss_fn,
            optimizer=optimizer,
            scheduler=make_scheduler(cfg, optimizer),
            scaler=torch.amp.GradScaler(device.type) if use_scaler else None,
            amp_dtype=amp_dtype,
            eval_model=eval_model,
            step_model=distributed.wrap(eval_model, device),  # DDP on several ranks, else eval_model
            x_tr=x_tr,
            y_tr=y_tr,
            val_loader=val_loader,
        )

    def _resize(self, x):
        return eval_resize(x, self.cfg.image_size)

    def run_epoch(self, epoch: int, progress: bool) -> dict:
        """One epoch of training, then validation: the history row."""
        cfg, n_tr = self.cfg, len(self.y_tr)
        es = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(distributed.rank_seed(es))  # dropout draws
        gen = torch.Generator().manual_seed(distributed.rank_seed(es))
        # Several ranks: this rank's slice of every global batch of batch_size images.
        sampler = distributed.ShardedBatchSampler(n_tr, cfg.batch_size, seed=es) if distributed.active() else None
        # A trailing batch of one image would break BatchNorm in train mode: drop it.
        train_loader = make_loader(
            self.x_tr,
            self.y_tr,
            batch_size=sampler.batch_size if sampler else cfg.batch_size,
            shuffle=True,
            seed=es,
            device=self.device,
            num_workers=cfg.num_workers,
            drop_last=n_tr % cfg.batch_size == 1,
            batch_sampler=sampler,
        )
        lr = self.optimizer.param_groups[0]["lr"]
        set_backbone_trainable(cfg, self.model, epoch)
        # DDP is built for the parameters that train: a new wrapper when that changed what trains.
        self.step_model = distributed.wrap(self.eval_model, self.device, self.step_model)
        t0 = time.perf_counter()
        try:
            tr = train_one_epoch(
                self.step_model,
                self.loss_fn,
                self.optimizer,
                train_loader,
                self.device,
                augment=functools.partial(self.augment, generator=gen),
                prep=self.norm,
                amp_dtype=self.amp_dtype,
                scaler=self.scaler,
                progress=progress,
                desc=f"{cfg.model} {epoch}/{cfg.epochs}",
            )
        except TrainingDivergedError as exc:  # before any evaluation or resume save of the broken weights
            raise TrainingDivergedError(f"[{cfg.model}] epoch {epoch}: {exc}", lr=exc.lr) from None
        tr = distributed.reduce_train_stats(tr)
        distributed.sync_buffers(self.model)
        ev = distributed.gather_eval(self._evaluate(self.eval_model, self.amp_dtype))
        self.scheduler.step()
        return {
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

    def _evaluate(self, model: nn.Module, amp_dtype) -> dict:
        return evaluate_loader(
            model, self.loss_fn, self.val_loader, self.device, self.norm, resize=self._resize, amp_dtype=amp_dtype
        )

    def finish(
        self,
        state: Progress,
        policy: ValidationPolicy,
        data_version: str,
        cache_resize: str,
        stopped_early: bool,
        data_source: DataSource,
    ) -> FitResult:
        """The best epoch's weights; ``policy``'s choices on their validation probabilities; the card."""
        model, cfg, best = self.model, self.cfg, state.best
        if best is None or state.best_state is None:
            raise RuntimeError(f"[{cfg.model}] no epoch was trained (epochs: {cfg.epochs})")
        model.load_state_dict(state.best_state)
        model.eval()
        # In full precision, as evaluate and predict run: the stored threshold must be chosen on the
        # same probabilities that the evaluate stage reports and the served model produces.
        ev = distributed.gather_eval(self._evaluate(model, None))
        choices = policy.decide(ev["labels"], ev["probs"])
        card = ModelCard(
            arch=model_arch(model),
            cache_size=int(np.shape(self.x_tr)[-1]),
            cache_resize=cache_resize,
            image_size=cfg.image_size,
            mean=tuple(self.spec["mean"]),
            std=tuple(self.spec["std"]),
            data_version=data_version,
            data_source=data_source,
            train_params=cfg.model_dump(mode="json"),
            best_epoch=int(best["best_epoch"]),
            val_auc=float(best["val_auc"]),
            val_loss=float(best["val_loss"]),
            val_acc=float(best["val_acc"]),
            epochs_run=len(state.history),
            stopped_early=bool(stopped_early),
            **choices.card_fields(),
        )
        return FitResult(
            model=model,
            history=state.history,
            best=dict(best),
            threshold=choices.threshold,
            card=card,
            val_probs=choices.probs,
            val_labels=ev["labels"],
        )


def epoch_metrics(row: dict) -> dict:
    """An epoch's MLflow metrics (step = epoch). The scheduled learning rate is ``scheduled_lr``: ``lr``
    is the run's param, and one name for two things makes MLflow's compare view ambiguous."""
    return {("scheduled_lr" if k == "lr" else k): v for k, v in row.items() if k != "epoch"}
