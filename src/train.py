"""Stage train@<model>: train one model on the cached train split, select on validation, log to MLflow.

    python src/train.py --params params.yaml --model cnn --cache data/cache --out models/cnn \
        --metrics metrics/train/cnn.json --history plots/history/cnn.csv --settings resolved/train/cnn.json

(normally via ``dvc repro train@cnn`` or ``dvc exp run -S lr=1e-4``). What decides the checkpoint comes
from --settings (resolved/train/<model>.json, the params stage's: the top-level knobs with the model's
``models.<model>`` overrides applied, ``train``, the validation choices of ``evaluate`` and what the data was,
:class:`cxr.training.run_config.TrainSettings`); without it, from params.yaml the same way. From params.yaml it
also reads ``mlflow`` (where the run is logged) and ``train.resume_every``: neither changes the checkpoint,
so neither is a dependency of the stage.
Writes the checkpoint (model.pt + model.json) to --out, flat final validation metrics to
--metrics and the per-epoch history CSV to --history (evaluate draws its curves: figure code is no
dependency of training). An
interrupted run continues from --resume (default data/resume/<model>.pt, outside DVC's outputs so
a rerun does not delete it) when the parameters and data are unchanged.

``train.devices`` > 1 (or ``auto`` with several GPUs): this script re-executes itself under
torchrun (``python -m torch.distributed.run --standalone --nproc-per-node N src/train.py ...``),
one process per GPU (DDP over NCCL), or N gloo processes on CPU; rank 0 alone writes the outputs
and the MLflow run. Several nodes: start it with torchrun yourself (the README has the command);
a process started by torchrun never relaunches. On a CUDA machine the stage first claims its
GPU(s) (``cxr.gpus``), so queued experiments (``dvc queue start -j N``) each get their own.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import contextlib
import sys
from pathlib import Path

import torch

from cxr import checkpoint
from cxr.config import ConfigError, MlflowConfig, TrainConfig, load_params, section
from cxr.data.cache import CacheError, load_info, load_split
from cxr.device import describe, resolve_device
from cxr.files import clean_number, write_history, write_metrics
from cxr.gpus import GpuClaimError, claim_gpus
from cxr.models import WeightsUnavailableError, list_models
from cxr.models.weights import materialised_weights
from cxr.run_context import run_name, run_tags
from cxr.runlock import ResumeLockedError, resume_lock
from cxr.tracking import NullTracker, make_tracker
from cxr.training import distributed
from cxr.training.engine import TrainingDivergedError
from cxr.training.fit import fit
from cxr.training.resume import config_hash
from cxr.training.run_config import TrainSettings

ERRORS = (ConfigError, CacheError, WeightsUnavailableError, ResumeLockedError, TrainingDivergedError, GpuClaimError)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", required=True, help=f"registry name ({', '.join(list_models())})")
    p.add_argument("--settings", default=None, help="the params stage's resolved/train/<model>.json")
    p.add_argument("--cache", default="data/cache", help="preprocess stage output")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--metrics", required=True, help="final validation metrics JSON")
    p.add_argument("--history", required=True, help="per-epoch history CSV")
    p.add_argument(
        "--pretrained",
        default=None,
        help="the weights stage's output (models/pretrained): where pretrained weights are read from",
    )
    p.add_argument(
        "--resume", required=True, help="resume checkpoint, outside the DVC outputs (data/resume/<model>.pt)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    params = load_params(args.params)
    settings = TrainSettings.read(args.settings) if args.settings else TrainSettings.from_params(params, args.model)
    if settings.run.model != args.model:
        raise ConfigError(f"--settings {args.settings} are {settings.run.model!r}'s, not --model {args.model!r}'s")
    run_cfg = settings.run
    if run_cfg.pretrained and run_cfg.weights is None and args.pretrained:
        run_cfg = run_cfg.replace(weights=materialised_weights(args.pretrained, args.model))
    if distributed.under_launcher():  # a rank started by torchrun (ours or the user's, multi-node)
        device = distributed.local_device(args.device)
        with distributed.process_group(device):
            return train(args, params, settings, run_cfg, device)
    n = distributed.resolve_devices(settings.devices, args.device)
    if n > 1 and run_cfg.batch_size % n:
        raise ConfigError(
            f"batch_size {run_cfg.batch_size} of {args.model} is not a multiple of train.devices = {n}: "
            f"each process takes an equal share of every batch. Fix: a batch_size that {n} divides, "
            "or another train.devices."
        )
    gpu = resolve_device(args.device).type == "cuda" and args.device in ("auto", "cuda")
    with claim_gpus(n if gpu else 0) as claim:
        if n > 1:
            return distributed.launch(n, __file__, argv, env=claim.env)
        device = torch.device("cuda", claim.ordinals[0]) if claim.ordinals else resolve_device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return train(args, params, settings, run_cfg, device)


# The training run's single values in MLflow (its charts): the rest are per-epoch curves.
FINAL_METRICS = ("best_epoch", "val_auc", "val_loss", "threshold")


def log_splits(tracker, cache: str, data_version: str) -> None:
    """The splits a run learns from and chooses on, as MLflow dataset inputs: the DVC path as source and the
    DVC data version as digest, so runs on other data show other datasets. Not the test split: training
    never reads it; the evaluate stage's run logs it, as the one that does."""
    for split, context in (("train", "training"), ("val", "validation")):
        tracker.log_dataset(split, f"{cache}/{split}_images.npy", data_version, context)


def train(args: argparse.Namespace, params: dict, settings: TrainSettings, run_cfg, device: torch.device) -> int:
    """One process's part of the stage; every output and the MLflow run come from rank 0 only."""
    main_rank = distributed.is_main()
    mlflow_cfg: MlflowConfig = section(params, "mlflow", MlflowConfig)
    info = load_info(args.cache)
    train, val = load_split(args.cache, "train"), load_split(args.cache, "val")
    world = distributed.world_size()
    if main_rank:
        print(
            f"[{args.model}] {len(train)} train / {len(val)} val images at {info['cache_size']} px -> "
            f"{run_cfg.image_size} px on {describe(device)}"
            + (f" x {world} processes (DDP)" if world > 1 else "")
            + f"; pretrained={run_cfg.pretrained}"
        )

    tracker = make_tracker(mlflow_cfg.experiment) if main_rank else NullTracker()
    data_version = info.get("data_version", "")
    tags = {
        **run_tags(args.model, data_version=data_version, device=describe(device)),
        "world_size": world,
        "config_hash": config_hash(run_cfg, data_version)[:16],
        "seed": run_cfg.seed,  # the MLflow UI groups runs by it (Group by -> Tags -> seed): seed spread
    }
    # One trainer per resume state (rank 0 holds it): a rerun after `kill -9` of dvc must not race the orphan.
    # (The orphan's MLflow run, left RUNNING, is marked KILLED when this run starts: cxr.tracking.)
    with resume_lock(args.resume, args.model) if main_rank else contextlib.nullcontext():
        fit_opts = {**settings.fit_options(), "resume_every": section(params, "train", TrainConfig).resume_every}
        return _fit_and_write(args, run_cfg, device, train, val, info, tracker, tags, mlflow_cfg, fit_opts, main_rank)


def _fit_and_write(args, run_cfg, device, train, val, info, tracker, tags, mlflow_cfg, fit_opts, main_rank) -> int:
    with tracker.start_run(run_name=run_name(args.model), tags=tags, system_metrics=True):
        log_splits(tracker, args.cache, info.get("data_version", ""))
        result = fit(
            run_cfg,
            (train.images, train.labels),
            (val.images, val.labels),
            device=device,
            tracker=tracker,
            resume_path=args.resume,
            data_version=info.get("data_version", ""),
            progress=not args.no_progress,
            cache_resize=info.get("resize", "stretch"),
            **fit_opts,
        )
        if not main_rank:
            return 0
        checkpoint.save(args.out, result.model, result.card)

        metrics = {k: clean_number(v) for k, v in result.metrics().items()}
        write_metrics(args.metrics, metrics)
        write_history(Path(args.history), result.history)

        # Beside the per-epoch curves, a handful of final values: the kept epoch and its threshold. The
        # rest of the kept epoch's validation metrics is the metrics file, logged as a table.
        tracker.log_metrics({f"best_{k}" if k.startswith("val_") else k: metrics[k] for k in FINAL_METRICS})
        tracker.log_table([{"metric": k, "value": v} for k, v in metrics.items()], "validation_metrics.json")
        tracker.log_artifact(Path(args.out) / checkpoint.META_FILE)
        tracker.log_artifact(args.history)
        if mlflow_cfg.log_model:
            tracker.log_model(result.model, name="model", image_size=run_cfg.image_size)
    print(
        f"[{args.model}] best epoch {result.best['best_epoch']}: val_auc {result.best['val_auc']:.4f} "
        f"val_loss {result.best['val_loss']:.4f}; temperature {result.card.temperature:.3f}; "
        f"threshold {result.threshold:.3f}; checkpoint in {args.out} "
        f"({result.timings().get('seconds_per_epoch', 0.0):.1f} s/epoch)"
    )
    return 0


if __name__ == "__main__":
    run_stage("train", main, ERRORS)
