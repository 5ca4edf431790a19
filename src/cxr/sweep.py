"""The sweep core: a batch_size x lr grid for one model, each configuration trained from scratch by ``training.fit``.

    base = resolve_run_config(params, "resnet50").replace(epochs=3)
    result = run_sweep(base, [16, 32, 64], [1e-3, 1e-4, 1e-2], train, val, test, tracker=tracker)
    result.table()        # one row per configuration (plots/sweep.csv)
    result.best           # chosen on the validation metric only

Run by ``src/sweep.py`` (stage ``sweep``). ``fit`` seeds and builds a new model and optimizer on
every call, so no configuration inherits weights from the previous one (the reference notebook's
sweep did). Test metrics are computed for every configuration for the record and are marked
``used_for_selection = False``: selection sees validation numbers only.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr.engine import predict
from cxr.metrics import binary_metrics
from cxr.training import RunConfig, fit, is_better
from cxr.tracking import NullTracker

# plots/sweep.csv (DVC-tracked): deterministic columns only. Each row's wall time ("seconds") is
# an MLflow metric of its nested run and is printed, but never written here.
TABLE_COLUMNS = [
    "batch_size", "lr", "val_auc", "val_loss", "val_acc", "best_epoch", "threshold",
    "test_auc", "test_acc", "test_balanced_accuracy", "test_sensitivity", "test_specificity",
    "first_epoch_train_loss", "selected", "test_used_for_selection",
]


@dataclass
class SweepResult:
    model: str
    select_metric: str
    rows: list[dict]
    best: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=TABLE_COLUMNS)

    def matrix(self, column: str, batch_sizes, lrs) -> np.ndarray:
        """(len(batch_sizes), len(lrs)) values of ``column`` for the heatmap."""
        lookup = {(r["batch_size"], float(r["lr"])): r[column] for r in self.rows}
        return np.array([[lookup.get((b, float(lr)), np.nan) for lr in lrs] for b in batch_sizes], dtype=float)

    def summary(self) -> dict:
        """metrics/sweep.json: the selected configuration, its validation metric, and its (unused) test numbers."""
        b = self.best
        return {
            "model": self.model, "select_metric": self.select_metric, "n_configs": len(self.rows),
            "best": {"batch_size": b["batch_size"], "lr": b["lr"], "val_auc": b["val_auc"], "val_loss": b["val_loss"],
                     "best_epoch": b["best_epoch"], "threshold": b["threshold"]},
            # No test split (split.test_fraction: 0 and none shipped): null test numbers, not a crash.
            "best_test": {"test_auc": b.get("test_auc"), "test_acc": b.get("test_acc"),
                          "test_balanced_accuracy": b.get("test_balanced_accuracy"), "used_for_selection": False},
        }


def grid(batch_sizes, lrs) -> list[tuple[int, float]]:
    return [(int(b), float(lr)) for b, lr in itertools.product(batch_sizes, lrs)]


def run_sweep(base: RunConfig, batch_sizes, lrs, train: tuple, val: tuple, test: tuple | None = None, *,
              select_metric: str = "val_auc", device=None, tracker: NullTracker | None = None,
              progress: bool = False, data_version: str = "", threshold_method: str = "youden",
              fixed_threshold: float = 0.5) -> SweepResult:
    """Train every (batch_size, lr) of the grid from a fresh initialisation; select on ``select_metric``.

    ``train``/``val``/``test`` are (uint8 images (N, S, S), labels). Each configuration gets its own
    nested MLflow run (when ``tracker`` has an active parent run) with its params, curves and test
    numbers; ``base`` supplies every other hyperparameter (epochs, image_size, seed, ...). The test
    numbers are at each run's threshold, chosen on validation as ``threshold_method`` says (the
    evaluate stage's ``evaluate.threshold``/``fixed_threshold``).
    """
    if select_metric not in ("val_auc", "val_loss"):
        raise ValueError(f"select_metric: expected val_auc or val_loss, found {select_metric!r}")
    tracker = tracker or NullTracker()
    rows: list[dict] = []
    best: dict | None = None
    for bs, lr in grid(batch_sizes, lrs):
        cfg = base.replace(batch_size=bs, lr=lr)
        tags = {"model": cfg.model, "stage": "sweep", "batch_size": bs, "lr": lr}
        start = time.perf_counter()
        with tracker.start_run(f"sweep {cfg.model} bs={bs} lr={lr:g}", tags=tags, nested=True):
            result = fit(cfg, train, val, device=device, tracker=tracker, progress=progress, data_version=data_version,
                         threshold_method=threshold_method, fixed_threshold=fixed_threshold)
            row = {"batch_size": bs, "lr": lr, "val_auc": result.best["val_auc"], "val_loss": result.best["val_loss"],
                   "val_acc": result.best["val_acc"], "best_epoch": result.best["best_epoch"],
                   "threshold": result.threshold, "first_epoch_train_loss": result.history[0]["train_loss"]}
            if test is not None and len(test[1]):
                probs = predict(result.model, test[0], mean=result.meta["mean"], std=result.meta["std"],
                                image_size=cfg.image_size, device=device, batch_size=max(bs, 64))
                m = binary_metrics(test[1], probs, result.threshold)  # the val-chosen threshold
                row.update(test_auc=m["roc_auc"], test_acc=m["accuracy"], test_balanced_accuracy=m["balanced_accuracy"],
                           test_sensitivity=m["sensitivity"], test_specificity=m["specificity"])
            row["seconds"] = time.perf_counter() - start
            row["test_used_for_selection"] = False
            tracker.log_metrics({k: v for k, v in row.items()
                                 if (k.startswith("test_") and k != "test_used_for_selection") or k == "seconds"})
            tracker.set_tags({"test_used_for_selection": "false"})
        rows.append(row)
        if is_better(row, best, select_metric):
            best = row
        if progress:
            print(f"[sweep] bs={bs} lr={lr:g}: val_auc {row['val_auc']:.4f} val_loss {row['val_loss']:.4f} "
                  f"({row['seconds']:.0f} s)")
    for row in rows:
        row["selected"] = row is best
    return SweepResult(model=base.model, select_metric=select_metric, rows=rows, best=dict(best))
