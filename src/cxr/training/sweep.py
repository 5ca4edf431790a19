"""The sweep core: a batch_size x lr grid for one model, each configuration trained from scratch by ``training.fit``.

    base = resolve_run_config(params, "resnet50").replace(epochs=3)
    result = run_sweep(base, [16, 32, 64], [1e-3, 1e-4, 1e-2], train, val, tracker=tracker)
    result.table()        # one row per configuration (plots/sweep.csv), validation numbers only
    result.best           # chosen on the validation metric

Run by ``src/sweep.py`` (stage ``sweep``). ``fit`` seeds and builds a new model and optimizer on
every call, so no configuration inherits weights from the previous one (the reference notebook's
sweep did). The sweep sees the train and validation splits only: it reports validation numbers
(ROC-AUC, loss, and accuracy, balanced accuracy, sensitivity and specificity at the threshold chosen
on validation) and never receives the test split. The selected configuration, kept as
``<model>-tuned``, is the one that reaches the test split, once, through the ``evaluate_tuned`` stage.

With several ``devices`` (``["cuda:0", "cuda:1", ...]``, or ``["cpu", "cpu"]`` to simulate two),
the configurations are spread over one process per device (a spawn-context process pool, each
worker pinned to its device); the rows come back in grid order and the selection, the table and
the MLflow runs are the same as with one device.
"""

from __future__ import annotations

import itertools
import math
import mmap
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr import checkpoint
from cxr.metrics import row_is_better
from cxr.policy import ValidationPolicy
from cxr.tracking import NullTracker, Tracker
from cxr.training.engine import TrainingDivergedError
from cxr.training.fit import epoch_metrics, fit
from cxr.training.run_config import RunConfig

# A configuration whose kept epoch has a validation loss above this (ten times the loss of answering
# 0.5 for every image, ln 2) or a non-finite one has diverged: its weights saturate to a constant
# output (val_auc 0.5, loss in the millions at lr 0.01). It is reported as diverged, never selected.
DIVERGED_VAL_LOSS = 10 * math.log(2)

# plots/sweep.csv (DVC-tracked): deterministic columns only. Each row's wall time ("seconds") is
# an MLflow metric of its nested run and is printed, but never written here.
# The validation numbers at the threshold chosen on validation (``FitResult.metrics``): optimistic by
# construction, since the threshold was fitted on the same images, but free (no extra prediction).
THRESHOLD_COLUMNS = ["val_acc_at_threshold", "val_balanced_accuracy", "val_sensitivity", "val_specificity"]
TABLE_COLUMNS = [
    "batch_size",
    "lr",
    "val_auc",
    "val_loss",
    "val_acc",
    "best_epoch",
    "threshold",
    *THRESHOLD_COLUMNS,
    "first_epoch_train_loss",
    "diverged",
    "selected",
]


@dataclass
class SweepResult:
    model: str
    select_metric: str
    rows: list[dict]
    best: dict = field(default_factory=dict)
    best_history: list[dict] = field(default_factory=list)  # the selected configuration's epochs

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=TABLE_COLUMNS)

    def matrix(self, column: str, batch_sizes, lrs) -> np.ndarray:
        """(len(batch_sizes), len(lrs)) values of ``column`` for the heatmap."""
        lookup = {(r["batch_size"], float(r["lr"])): (np.nan if r["diverged"] else r[column]) for r in self.rows}
        return np.array([[lookup.get((b, float(lr)), np.nan) for lr in lrs] for b in batch_sizes], dtype=float)

    def diverged_matrix(self, batch_sizes, lrs) -> np.ndarray:
        """(len(batch_sizes), len(lrs)) booleans: the configurations that diverged (the heatmap marks them)."""
        lookup = {(r["batch_size"], float(r["lr"])): bool(r["diverged"]) for r in self.rows}
        return np.array([[lookup.get((b, float(lr)), False) for lr in lrs] for b in batch_sizes], dtype=bool)

    def summary(self) -> dict:
        """metrics/sweep.json: the selected configuration and its validation numbers. Its test numbers are
        evaluate_tuned's (metrics/eval/<model>-tuned.json), not the sweep's."""
        b = self.best
        keys = ("batch_size", "lr", "val_auc", "val_loss", "best_epoch", "threshold", *THRESHOLD_COLUMNS)
        return {
            "model": self.model,
            "select_metric": self.select_metric,
            "n_configs": len(self.rows),
            "best": {k: b.get(k) for k in keys},
        }


def grid(batch_sizes, lrs) -> list[tuple[int, float]]:
    return [(int(b), float(lr)) for b, lr in itertools.product(batch_sizes, lrs)]


def run_sweep(
    base: RunConfig,
    batch_sizes,
    lrs,
    train: tuple,
    val: tuple,
    *,
    select_metric: str = "val_auc",
    device=None,
    tracker: Tracker | None = None,
    progress: bool = False,
    data_version: str = "",
    policy: ValidationPolicy | None = None,
    devices=None,
    keep_dir: str | None = None,
    data_source=None,
) -> SweepResult:
    """Train every (batch_size, lr) of the grid from a fresh initialisation; select on ``select_metric``.

    ``train``/``val`` are (uint8 images (N, S, S), labels); there is no test argument: the sweep never
    sees the test split. Each configuration gets its own nested MLflow run (when ``tracker`` has an
    active parent run) with its params, curves and validation numbers; ``base`` supplies every other
    hyperparameter (epochs, image_size, seed, ...). Each configuration's temperature, threshold, refer band
    and operating points are chosen on validation by ``policy`` (:class:`cxr.policy.ValidationPolicy`, as
    train chooses a model's; default: a Youden threshold only). ``devices``: two or more spread
    the grid over one worker process per device (``device`` is then unused). ``keep_dir``: each
    configuration's model is saved there (``checkpoint.save``, in ``row["checkpoint"]``), so the
    selected one can be kept.
    """
    if select_metric not in ("val_auc", "val_loss"):
        raise ValueError(f"select_metric: expected val_auc or val_loss, found {select_metric!r}")
    tracker = tracker if tracker is not None else NullTracker()
    opts: dict[str, Any] = dict(data_version=data_version, policy=policy, keep_dir=keep_dir, data_source=data_source)
    configs = [base.replace(batch_size=bs, lr=lr) for bs, lr in grid(batch_sizes, lrs)]
    devices = list(devices or [])
    if len(devices) > 1:
        results = _run_parallel(configs, devices, train, val, opts, progress)
    else:
        dev = devices[0] if devices else device
        results = [_report(train_config(cfg, train, val, dev, **opts), progress) for cfg in configs]
    rows: list[dict] = []
    best: dict | None = None
    best_history: list[dict] = []
    for cfg, (row, history) in zip(configs, results):
        _log_configuration(tracker, cfg, row, history)
        rows.append(row)
        if not row["diverged"] and row_is_better(row, best, select_metric):
            best, best_history = row, history
    if best is None:
        raise TrainingDivergedError(
            f"every configuration of the {base.model} sweep diverged (learning rates {sorted(set(map(float, lrs)))}): "
            "nothing to select. Fix: smaller values in sweep.lrs, e.g. -S 'sweep.lrs=[0.001,0.0001]'"
        )
    for row in rows:
        row["selected"] = row is best
    return SweepResult(
        model=base.model, select_metric=select_metric, rows=rows, best=dict(best), best_history=best_history
    )


def _log_configuration(tracker: Tracker, cfg: RunConfig, row: dict, history: list[dict]) -> None:
    """One configuration's nested MLflow run: params, per-epoch curves, its validation numbers at its threshold."""
    # Logged once the configuration is done, from this process, whichever process trained it: the run spans
    # the training's own start and end, so the UI's Duration is the configuration's.
    tags = {
        "model": cfg.model,
        "stage": "sweep",
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "device": row["worker"],
    }
    name = f"sweep {cfg.model} bs={cfg.batch_size} lr={cfg.lr:g}"
    with tracker.start_run(name, tags=tags, nested=True, span=row.get("span")):
        tracker.log_params(cfg.as_params())
        for i, h in enumerate(history, start=1):
            tracker.log_metrics(epoch_metrics(h), step=h.get("epoch", i))  # named as a training run's
        tracker.log_metrics({k: row[k] for k in ("threshold", *THRESHOLD_COLUMNS, "seconds")})


def train_config(
    cfg: RunConfig,
    train: tuple,
    val: tuple,
    device,
    *,
    data_version: str,
    policy: ValidationPolicy | None = None,
    keep_dir: str | None = None,
    data_source=None,
) -> tuple[dict, list[dict]]:
    """One configuration from a fresh initialisation: its table row (validation numbers, at the threshold
    chosen on validation for the threshold columns) and history. With ``keep_dir`` its model is saved in
    ``keep_dir/bs<batch_size>_lr<lr>`` (``row["checkpoint"]``), its validation metrics in ``row["metrics"]``."""
    started_at = time.time()
    try:
        result = fit(
            cfg,
            train,
            val,
            policy,
            device=device,
            progress=False,
            data_version=data_version,
            data_source=data_source,  # the kept model's card says what it was trained on
        )
    except TrainingDivergedError:  # the loss became NaN/inf: a row that says so, not a failed sweep
        nan = float("nan")
        row: dict[str, Any] = {"batch_size": cfg.batch_size, "lr": cfg.lr, "best_epoch": 0, "diverged": True}
        row.update({k: nan for k in TABLE_COLUMNS if k not in row and k != "selected"})
        row.update(_timing(started_at), worker=_worker_name(device))
        return row, []
    metrics = result.metrics()  # the best epoch's, and the threshold's on the same validation split
    row = {
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "val_auc": result.best["val_auc"],
        "val_loss": result.best["val_loss"],
        "val_acc": result.best["val_acc"],
        "best_epoch": result.best["best_epoch"],
        "threshold": result.threshold,
        **{k: metrics[k] for k in THRESHOLD_COLUMNS},
        "first_epoch_train_loss": result.history[0]["train_loss"],
        "diverged": diverged(result.best["val_loss"]),
    }
    if keep_dir is not None:  # not table columns: what keeping the selected model needs
        row["metrics"] = metrics
        row["checkpoint"] = str(
            checkpoint.save(Path(keep_dir) / f"bs{cfg.batch_size}_lr{cfg.lr:g}", result.model, result.card)
        )
    row.update(_timing(started_at))
    row["worker"] = _worker_name(device)  # not a table column: the MLflow tag "device"
    return row, result.history


def _timing(started_at: float) -> dict:
    """A configuration's wall time: ``seconds``, and ``span`` (start, end), not a table column: its MLflow run's."""
    span = (started_at, time.time())
    return {"seconds": span[1] - span[0], "span": span}


def diverged(val_loss: float) -> bool:
    return not math.isfinite(val_loss) or val_loss > DIVERGED_VAL_LOSS


def _worker_name(device) -> str:
    return f"{device or 'auto'} (pid {os.getpid()})"


def _report(result: tuple[dict, list[dict]], progress: bool) -> tuple[dict, list[dict]]:
    row = result[0]
    if progress:
        outcome = (
            "diverged (loss far above chance: lower the learning rate)"
            if row["diverged"]
            else f"val_auc {row['val_auc']:.4f} val_loss {row['val_loss']:.4f}"
        )
        print(
            f"[sweep] bs={row['batch_size']} lr={row['lr']:g}: {outcome} ({row['seconds']:.0f} s on {row['worker']})",
            flush=True,
        )
    return result


# --------------------------------------------------------------------------------------------
# One worker process per device
# --------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _portable(split):
    """A split for a spawned worker: a memory-mapped array travels as its file, not its bytes."""
    images, labels = split
    # Only a whole mapped file (np.load(mmap_mode="r")): a view's offset attribute is its file's, not its own.
    if isinstance(images, np.memmap) and images.filename and isinstance(images.base, mmap.mmap):
        images = ("memmap", images.filename, images.dtype.str, images.shape, images.offset)
    return images, np.asarray(labels)


def _restore(split):
    images, labels = split
    if isinstance(images, tuple) and images and images[0] == "memmap":
        _, filename, dtype, shape, offset = images
        images = np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=tuple(shape), offset=offset)
    return images, labels


def _init_worker(device_queue, splits, threads: int) -> None:
    import torch

    device = torch.device(device_queue.get())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    _WORKER.update(device=device, splits=[_restore(s) for s in splits])


def _worker_task(cfg: RunConfig, opts: dict):
    train, val = _WORKER["splits"]
    return train_config(cfg, train, val, _WORKER["device"], **opts)


def _run_parallel(configs, devices, train, val, opts, progress) -> list:
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    queue = ctx.Queue()
    for d in devices:
        queue.put(str(d))
    cpu_workers = sum(1 for d in devices if str(d).startswith("cpu"))
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers)) if cpu_workers else 1
    splits = [_portable(train), _portable(val)]
    if progress:
        print(
            f"[sweep] {len(configs)} configurations over {len(devices)} processes: {', '.join(map(str, devices))}",
            flush=True,
        )
    results: list = [None] * len(configs)
    with ProcessPoolExecutor(
        max_workers=len(devices), mp_context=ctx, initializer=_init_worker, initargs=(queue, splits, threads)
    ) as pool:
        futures = {pool.submit(_worker_task, cfg, opts): i for i, cfg in enumerate(configs)}
        for fut in as_completed(futures):
            results[futures[fut]] = _report(fut.result(), progress)
    return results
