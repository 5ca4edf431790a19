"""Stage evaluate@<model>: score a trained checkpoint on the test split, once, with bootstrap CIs.

    python src/evaluate.py --params params.yaml --model cnn --checkpoint models/cnn --cache data/cache \
        --predictions eval/cnn/predictions.csv \
        --metrics metrics/eval/cnn.json --plots plots/eval/cnn --figures figures/eval/cnn

(normally via ``dvc repro evaluate@cnn``). Reads ``evaluate`` and ``mlflow`` from params.yaml.
The decision threshold is the model card's (chosen at training on validation as
``evaluate.threshold`` says: youden | midpoint | fixed); the test split is predicted once. Writes:

  --predictions  path, label, probability, predicted (one row per test image)
  --validation-predictions  the same for the validation split (compare tests ties between candidates on it)
  --metrics      metrics at the validation threshold and at 0.5, each with its bootstrap CI
  --plots        confusion.csv (actual, predicted), roc.csv, pr.csv, calibration.csv (DVC plots)
  --figures      confusion, roc, pr, calibration (before and after the card's temperature), refer (error
                 among decided vs coverage, when the card has a refer band), augmentation, gallery PNGs, and
                 with --history the training curves (drawn here, not by train: figure code retrains nothing)

and, for every external set of ``--external`` (stage external), the same metrics under ``external.<set>``
in --metrics, its rows (with a ``set`` column) in --external-predictions and its ROC in
--plots/roc_external.csv, at the same threshold: the sets are scored, never chosen on; the figure
roc_external.png draws the internal and external curves with the threshold's operating point on each.

and logs the test and external metrics, figures and sets into an MLflow run of its own, ``<model> evaluate``,
nested under the run that trained the checkpoint (a top-level run if that one cannot be found; nothing,
with a warning, if MLflow is unreachable): the training run keeps its curves and final values.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import os
from pathlib import Path

import pandas as pd

from cxr import checkpoint
from cxr.candidates import architecture_of
from cxr.config import ConfigError, EvaluateConfig, MlflowConfig, load_params, section
from cxr.data.cache import CacheError, load_info, load_split
from cxr.data.external import load_index
from cxr.device import describe
from cxr.evaluation.evaluate import (
    card_probabilities,
    evaluate_checkpoint,
    evaluation_figures,
    predictions_table,
)
from cxr.evaluation.operating import OperatingThreshold
from cxr.evaluation.selective import refer_figure
from cxr.files import write_csv, write_metrics
from cxr.gpus import GpuClaimError, hold_device
from cxr.models import list_models
from cxr.plots import save_figure, training_curves_figure
from cxr.run_context import run_name, run_tags
from cxr.tracking import PARENT_RUN_TAG, make_tracker
from cxr.tracking.runs import find_training_run

PLOT_FILES = ("confusion", "roc", "pr", "calibration")


ERRORS = (ConfigError, CacheError, FileNotFoundError, ValueError, GpuClaimError)  # see cxr.stage


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--model", required=True, help=f"registry name ({', '.join(list_models())}), or <name>-tuned (the sweep's)"
    )
    p.add_argument("--checkpoint", required=True, help="train stage output folder (model.pt + model.json)")
    p.add_argument("--cache", default="data/cache", help="preprocess stage output")
    p.add_argument("--history", default=None, help="the train stage's per-epoch CSV: the curves figure")
    p.add_argument("--predictions", required=True, help="per-image predictions CSV")
    p.add_argument("--metrics", required=True, help="test metrics JSON, with CIs (git-tracked details)")
    p.add_argument("--plots", required=True, help="folder for the DVC plot CSVs")
    p.add_argument("--figures", required=True, help="folder for the PNG figures")
    p.add_argument("--external", default=None, help="the external stage's folder (index.json and one cache per set)")
    p.add_argument("--external-predictions", default=None, help="per-image predictions on the external sets (CSV)")
    p.add_argument(
        "--validation-predictions", default=None, help="per-image validation predictions (CSV): compare's tie test"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    cfg: EvaluateConfig = section(params, "evaluate", EvaluateConfig)
    mlflow_cfg: MlflowConfig = section(params, "mlflow", MlflowConfig)
    device = hold_device(args.device)  # on CUDA a GPU of its own (cxr.gpus), for queued experiments

    model, card = checkpoint.load(args.checkpoint, device=device)
    if card.name != architecture_of(args.model):
        raise ConfigError(f"--checkpoint {args.checkpoint} holds model {card.name!r}, not --model {args.model!r}")
    val, test = load_split(args.cache, "val"), load_split(args.cache, "test")
    # The operating points' thresholds, set on validation by train (cxr.policy) and kept in the card: test and
    # external sets are only scored at them.
    val_probs = card_probabilities(model, card, val.images, cfg, device)
    operating = [OperatingThreshold.from_dict(p) for p in card.operating_points()]
    result = evaluate_checkpoint(
        model,
        card,
        test=(test.images, test.labels, test.paths),
        cfg=cfg,
        device=device,
        n_val=len(val),
        operating=operating,
        name=args.model,  # the sweep's resnet_small-tuned under its own name (and colour), not its architecture's
    )

    external = evaluate_external_sets(args, model, card, cfg, device, operating)
    write_tables(args, result, external, predictions_table(val.paths, val.labels, val_probs, card.threshold))

    figs = evaluation_figures(
        result,
        model,
        card,
        test_images=test.images,
        val_images=val.images,
        cfg=cfg,
        device=device,
        external=external,
    )
    if card.refer_band is not None:  # error among decided vs coverage: validation, test, external sets
        sets = {"internal test": result, **external}
        figs["refer"] = refer_figure(
            (val.labels, val_probs),
            {n: (r.test_labels, r.test_probs) for n, r in sets.items()},
            card.threshold,
            card.refer,
            title=f"{args.model}: refer band (each level set on validation)",
        )

    if args.history:
        figs["curves"] = curves_figure(args.model, args.history, card)

    tracker = make_tracker(mlflow_cfg.experiment)
    tags = {**run_tags(args.model, data_version=card.data_version, device=describe(device)), "stage": "evaluate"}
    training = find_training_run(tracker, card)
    experiment = None
    if training:  # nested under its training run in the UI (MLflow's own tag: that run has ended)
        tags[PARENT_RUN_TAG] = training.run_id
        # an applied experiment's checkpoint, evaluated by `dvc repro`: the run is named after that experiment
        experiment = os.environ.get("DVC_EXP_NAME") or training.experiment
        tags.update({"dvc_exp_name": experiment} if experiment else {})
    elif tracker.active:
        print(f"[{args.model}] training run not found in MLflow; the evaluation run is a top-level run")
    with tracker.start_run(run_name(f"{args.model} evaluate", experiment), tags=tags):
        log_evaluation(tracker, result, external, args.cache, args.external, card.data_version)
        for name, fig in figs.items():  # the PNG as written: MLflow's log_figure would render it again
            tracker.log_artifact(save_figure(fig, Path(args.figures) / f"{name}.png"), "eval")
        tracker.log_artifact(args.metrics, "eval")
    if training:  # the training run's row in the MLflow runs table: its params and threshold beside its test results
        at = result.report["at_val_threshold"]
        tracker.log_metrics({f"test_{k}": at[k]["value"] for k in HEADLINE}, run_id=training.run_id)

    print_summary(args.model, result, external)
    return 0


def write_tables(args, result, external: dict, validation: pd.DataFrame) -> None:
    """The predictions (test, external sets, validation), the metrics JSON and the DVC plot files."""
    Path(args.predictions).parent.mkdir(parents=True, exist_ok=True)
    write_csv(result.tables["predictions"], args.predictions)
    if args.validation_predictions:  # what compare tells tied candidates apart on (cxr.evaluation.selection)
        Path(args.validation_predictions).parent.mkdir(parents=True, exist_ok=True)
        write_csv(validation, args.validation_predictions)
    write_metrics(args.metrics, {**result.report, "external": {n: r.report for n, r in external.items()}})
    plots_dir = Path(args.plots)
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOT_FILES:
        result.tables[name].to_csv(plots_dir / f"{name}.csv", index=False, lineterminator="\n")
    write_external_tables(args, external)


def curves_figure(name: str, history: str, card):
    """The training curves of ``name`` from its per-epoch CSV, the kept epoch marked."""
    select_metric = card.train_params.get("select_metric", "val_auc")
    return training_curves_figure(
        pd.read_csv(history),
        best_epoch=card.best_epoch,
        title=f"{name}: training curves (kept epoch by {select_metric})",
        acc_threshold=0.5,  # what engine.train_one_epoch / evaluate_loader count as a PNEUMONIA call
    )


# The evaluation's single values charted in its run: the headline ones, per set. Every metric with its CI
# is the table artifact eval/metrics_table.json (and the metrics JSON).
HEADLINE = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity")


def log_evaluation(tracker, result, external: dict, cache: str, external_dir: str | None, data_version: str) -> None:
    """The test and external results into the evaluation run: a few charts, one table, the test split and
    the external sets as dataset inputs."""
    sets = {"test": result, **external}
    tracker.log_dataset("test", f"{cache}/test_images.npy", data_version, "testing")
    tracker.log_metrics({f"{name}_{k}": r.flat_metrics(prefix="")[k] for name, r in sets.items() for k in HEADLINE})
    rows = [{"set": name, "metric": k, "value": v} for name, r in sets.items() for k, v in r.flat_metrics("").items()]
    tracker.log_table(rows, "eval/metrics_table.json")
    index = load_index(external_dir) if external_dir else {}
    for name in external:
        tracker.log_dataset(name, f"{external_dir}/{name}", str(index[name].get("data_version", "")), "external")


def print_summary(model: str, result, external: dict) -> None:
    """The stage's log: the test numbers at the card's threshold, the operating points, the external sets."""
    at = result.report["at_val_threshold"]
    ci = at["accuracy"]
    print(
        f"[{model}] test n={result.report['n']} threshold {result.threshold:.3f} "
        f"({result.threshold_method}, from the model card): "
        f"accuracy {ci['value']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}], "
        f"sensitivity {at['sensitivity']['value']:.3f}, specificity {at['specificity']['value']:.3f}, "
        f"AUC {at['roc_auc']['value']:.3f}"
    )
    for set_name, r in [("test", result), *external.items()]:
        for p in r.report["operating_points"]:
            if p["threshold"] is None:
                if set_name == "test":
                    why = OperatingThreshold.from_dict(p).shortfall()
                    print(f"[{model}] {p['metric']} {p['target']:.0%}: no threshold, {why}")
                continue
            print(
                f"[{model}] {p['metric']} {p['target']:.0%} on validation (threshold {p['threshold']:.3f}): "
                f"{set_name} sensitivity {p['sensitivity']['value']:.3f}, specificity {p['specificity']['value']:.3f}"
            )
    for set_name, r in [("test", result), *external.items()]:
        c, f = r.report.get("calibration"), r.report.get("refer")
        if c:
            print(
                f"[{model}] {set_name} temperature {c['temperature']:.3f}: ECE {c['uncalibrated']['ece']:.3f} "
                f"-> {c['calibrated']['ece']:.3f}, Brier {c['uncalibrated']['brier']:.3f} "
                f"-> {c['calibrated']['brier']:.3f}"
            )
        if f and "low" in f:
            print(
                f"[{model}] {set_name} refer band [{f['low']:.3f}, {f['high']:.3f}): coverage "
                f"{f['coverage']['value']:.3f}, error among decided {f['error_among_decided']['value']:.3f}"
            )
    for set_name, r in external.items():
        at = r.report["at_val_threshold"]
        print(
            f"[{model}] external {set_name} n={r.report['n']} at the same threshold: "
            f"accuracy {at['accuracy']['value']:.3f}, balanced accuracy {at['balanced_accuracy']['value']:.3f}, "
            f"sensitivity {at['sensitivity']['value']:.3f}, specificity {at['specificity']['value']:.3f}, "
            f"AUC {at['roc_auc']['value']:.3f} [{at['roc_auc']['ci_low']:.3f}, {at['roc_auc']['ci_high']:.3f}]"
        )


def evaluate_external_sets(args, model, card: checkpoint.ModelCard, cfg: EvaluateConfig, device, operating) -> dict:
    """set name -> EvalResult for every set of the external stage's index, at the card's threshold."""
    if not args.external:
        return {}
    out = {}
    for name in load_index(args.external):
        folder = Path(args.external) / name
        size = load_info(folder)["cache_size"]
        if size != card.cache_size:
            raise CacheError(
                f"external set {name!r} was decoded at {size} px, the model at {card.cache_size} px: "
                "run `dvc repro external` (it decodes the sets as the run's cache)"
            )
        s = load_split(folder, "test")
        test = (s.images, s.labels, s.paths)
        out[name] = evaluate_checkpoint(
            model, card, test=test, cfg=cfg, device=device, operating=operating, name=args.model
        )
    return out


def write_external_tables(args, external: dict) -> None:
    """The external predictions (one CSV, a ``set`` column) and roc_external.csv next to the DVC plot files."""

    def stacked(table: str) -> pd.DataFrame:
        parts = [r.tables[table].assign(set=n) for n, r in external.items()]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["set"])

    if args.external_predictions:
        Path(args.external_predictions).parent.mkdir(parents=True, exist_ok=True)
        write_csv(stacked("predictions"), args.external_predictions)
    roc = stacked("roc")
    roc[["set", *[c for c in roc.columns if c != "set"]]].to_csv(
        Path(args.plots) / "roc_external.csv", index=False, lineterminator="\n"
    )


if __name__ == "__main__":
    run_stage("evaluate", main, ERRORS)
