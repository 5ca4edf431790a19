"""Stage sweep: batch_size x lr grid for one model, each configuration from a fresh initialisation.

    python src/sweep.py --params params.yaml --cache data/cache --metrics metrics/sweep.json \
        --table plots/sweep.csv --figures figures/sweep

(normally via ``dvc repro sweep``). Reads ``sweep`` (model, batch_sizes, lrs, epochs, image_size,
select_metric), and for everything else the sweep model's training setup: ``seed``, ``image_size``,
``train``, ``models`` (the global lr / batch_size / epochs are replaced by the grid and
``sweep.epochs``). Writes the selected configuration to --metrics, one row per configuration to
--table, the annotated heatmap to --figures/heatmap.png, and an MLflow parent run with one nested
run per configuration. It loads the train and validation splits only and reports validation
numbers: the test split is scored once, for the kept configuration (``--tuned``), by the
``evaluate_tuned`` stage.

DVC's own way to run a grid, one experiment per configuration (each a full pipeline run)::

    dvc exp run --queue -S lr=1e-3 -S batch_size=16   # ... one line per configuration
    dvc queue start --jobs 1 && dvc exp show

This stage keeps the grid inside one pipeline run, so ``dvc repro`` gives the whole table.
``sweep.devices`` (default ``auto``: every visible GPU, one process on CPU) spreads the
configurations over one process per device; on a CUDA machine the stage claims the GPUs it uses
(``cxr.gpus``: what is free, at least one), so queued experiments do not share them.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path

from cxr.config import ConfigError, MlflowConfig, SweepConfig, load_params, section
from cxr.data.cache import CacheError, load_info, load_split
from cxr.device import describe, resolve_device
from cxr.files import clean_number, json_safe, write_history, write_metrics
from cxr.gpus import GpuClaimError, claim_gpus
from cxr.models import WeightsUnavailableError
from cxr.models.weights import materialised_weights
from cxr.plots import save_figure, sweep_heatmap_figure
from cxr.policy import ValidationPolicy
from cxr.run_context import run_name
from cxr.tracking import make_tracker
from cxr.training import distributed
from cxr.training.engine import TrainingDivergedError
from cxr.training.run_config import resolve_data_source, resolve_run_config
from cxr.training.sweep import run_sweep

ERRORS = (ConfigError, CacheError, TrainingDivergedError, GpuClaimError, WeightsUnavailableError)  # see cxr.stage


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--cache", default="data/cache", help="preprocess stage output")
    p.add_argument("--metrics", required=True, help="selected configuration JSON (DVC metrics)")
    p.add_argument("--table", required=True, help="one row per configuration CSV (DVC plot)")
    p.add_argument("--figures", required=True, help="folder for heatmap.png")
    p.add_argument("--pretrained", default=None, help="the weights stage's output (models/pretrained)")
    p.add_argument("--tuned", default=None, help="folder for the selected configuration's model (<model>-tuned)")
    p.add_argument("--tuned-metrics", default=None, help="its validation metrics JSON (as train writes them)")
    p.add_argument("--tuned-history", default=None, help="its per-epoch history CSV (as train writes it)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    # What the kept model's card records, as train's does: its data source and the choices made on validation.
    card_fields = {"data_source": resolve_data_source(params), "policy": ValidationPolicy.from_params(params)}
    cfg: SweepConfig = section(params, "sweep", SweepConfig)
    mlflow_cfg: MlflowConfig = section(params, "mlflow", MlflowConfig)
    base = resolve_run_config(params, cfg.model)
    if base.pretrained and base.weights is None and args.pretrained:
        base = base.replace(weights=materialised_weights(args.pretrained, cfg.model))
    base = base.replace(epochs=cfg.epochs, image_size=cfg.image_size or base.image_size)
    info = load_info(args.cache)
    train, val = load_split(args.cache, "train"), load_split(args.cache, "val")  # never the test split
    device = resolve_device(args.device)
    n = len(cfg.batch_sizes) * len(cfg.lrs)
    print(
        f"[sweep] {cfg.model}: {len(cfg.batch_sizes)} batch sizes x {len(cfg.lrs)} learning rates = {n} runs of "
        f"{cfg.epochs} epoch(s) at {base.image_size} px; selection on {cfg.select_metric}"
    )
    with contextlib.ExitStack() as stack:
        devices = sweep_devices(cfg.devices, args.device, device, n, stack)
        staging = None  # every configuration's model, until the selected one is kept (--tuned)
        if args.tuned:
            Path(args.tuned).parent.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".sweep-", dir=Path(args.tuned).parent)
            stack.callback(shutil.rmtree, staging, ignore_errors=True)
        splits = (train, val)
        return run(args, cfg, base, info, splits, mlflow_cfg, devices, {"keep_dir": staging, **card_fields})


def sweep_devices(devices, requested: str, device, n_configs: int, stack: contextlib.ExitStack) -> list:
    """The devices of the worker processes: claimed GPUs (free ones, at least one) or ``devices`` x CPU."""
    want = min(distributed.resolve_devices(devices, requested), n_configs)
    if device.type == "cuda" and requested in ("auto", "cuda"):
        claim = stack.enter_context(claim_gpus(want, at_least=1))
        if claim.ordinals:
            return [f"cuda:{o}" for o in claim.ordinals]
        return [f"cuda:{i}" for i in range(want)]
    return [device] * want


def keep_tuned(args, result) -> None:
    """The selected configuration's model in --tuned, its metrics and history as train writes a model's:
    ``<model>-tuned``, evaluated and compared like the models of params.yaml."""
    if not args.tuned:
        return
    out = Path(args.tuned)
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(result.best["checkpoint"], out)
    if args.tuned_metrics:
        write_metrics(args.tuned_metrics, {k: clean_number(v) for k, v in result.best["metrics"].items()})
    if args.tuned_history:
        write_history(args.tuned_history, result.best_history)
    b = result.best
    print(f"[sweep] kept the selected configuration (batch_size={b['batch_size']}, lr={b['lr']:g}) in {out}")


def run(args, cfg, base, info, splits, mlflow_cfg, devices, keep: dict) -> int:
    """``keep``: where the configurations' models wait (``keep_dir``), what their cards record (``data_source``)
    and the policy of the choices made on validation (``policy``)."""
    train, val = splits
    if len(devices) == 1:
        print(f"[sweep] on {describe(resolve_device(devices[0]))}")

    tracker = make_tracker(mlflow_cfg.experiment)
    with tracker.start_run(
        run_name(f"sweep {cfg.model}"),  # "sweep resnet_small [lr-bs]": the experiment or commit, as train's runs
        tags={"stage": "sweep", "model": cfg.model, "data_version": info.get("data_version", "")},
    ):
        tracker.log_params(
            {
                "model": cfg.model,
                "batch_sizes": cfg.batch_sizes,
                "lrs": cfg.lrs,
                "epochs": cfg.epochs,
                "image_size": base.image_size,
                "select_metric": cfg.select_metric,
            }
        )
        result = run_sweep(
            base,
            cfg.batch_sizes,
            cfg.lrs,
            (train.images, train.labels),
            (val.images, val.labels),
            select_metric=cfg.select_metric,
            devices=devices,
            tracker=tracker,
            progress=not args.no_progress,
            data_version=info.get("data_version", ""),
            **keep,
        )
        keep_tuned(args, result)
        summary = json_safe(result.summary())
        write_metrics(args.metrics, summary)
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        result.table().round(6).to_csv(args.table, index=False, lineterminator="\n")

        b = result.best
        lrs = sorted(cfg.lrs)  # an ordered axis, whatever order the grid was written in
        fig = sweep_heatmap_figure(
            cfg.batch_sizes,
            lrs,
            result.matrix(cfg.select_metric, cfg.batch_sizes, lrs),
            metric=cfg.select_metric,
            selected=(b["batch_size"], b["lr"]),
            diverged=result.diverged_matrix(cfg.batch_sizes, lrs),
            title=f"Sweep {cfg.model}, {cfg.epochs} epoch(s): {cfg.select_metric} (red box = selected on validation)",
        )
        tracker.log_metrics({f"best_{cfg.select_metric}": b[cfg.select_metric]})
        tracker.set_tags({"best_batch_size": b["batch_size"], "best_lr": b["lr"]})
        tracker.log_artifact(save_figure(fig, Path(args.figures) / "heatmap.png"), "sweep")
        tracker.log_artifact(args.table, "sweep")
    print(
        f"[sweep] selected batch_size={b['batch_size']} lr={b['lr']:g} ({cfg.select_metric} "
        f"{b[cfg.select_metric]:.4f}); table in {args.table}"
    )
    return 0


if __name__ == "__main__":
    run_stage("sweep", main, ERRORS)
