"""Stage compare: the Results section, comparison figures, and the best model (on validation) in the Model Registry.

    python src/compare.py --params params.yaml \
        --train-metrics metrics/train --eval-metrics metrics/eval --roc plots/eval \
        --sweep metrics/sweep.json --sweep-table plots/sweep.csv --checkpoints models \
        --report reports/results.md --csv reports/results.csv --figures figures/compare \
        --predictions eval --paired metrics/paired.json

(normally via ``dvc repro compare``). Reads ``models`` (the model list), ``compare``, ``mlflow`` and the
bootstrap settings of ``evaluate`` from params.yaml. Tables and figures come from the metrics files; the
paired comparisons with the selected model (``cxr.evaluation.paired``) from the per-image predictions
under --predictions; the checkpoint folders are read just to find (or, if need be, log) the selected
model for ``mlflow.registered_model``. A model whose files are missing is skipped with a warning; MLflow
being unreachable costs only the registry entry.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import json
import warnings
from pathlib import Path

import pandas as pd

from cxr.candidates import evaluate_stage, tuned_name
from cxr.checkpoint import CheckpointError, load_card
from cxr.compare_figures import metrics_bar_figure, roc_comparison_figure, selected_first, shift_roc_figure
from cxr.config import CompareConfig, ConfigError, EvaluateConfig, MlflowConfig, load_params, section
from cxr.evaluation.compare import (
    bar_table,
    headline,
    results_csv,
    results_table,
    roc_curves,
    shift_panels,
)
from cxr.evaluation.paired import PairingError, compare_with_selected, read_predictions
from cxr.evaluation.promotion import RegistryError, register_candidate
from cxr.evaluation.report import results_markdown
from cxr.evaluation.selection import read_validation, select_candidate, selection_markdown
from cxr.files import write_csv, write_metrics
from cxr.plots import save_figure
from cxr.run_context import project_root, run_name
from cxr.tracking import make_tracker

ERRORS = (
    ConfigError,
    CheckpointError,
    FileNotFoundError,
    RegistryError,
    PairingError,
)  # user-actionable (see cxr.stage)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--models", nargs="+", default=None, help="models to compare (default: the keys of params.yaml's models:)"
    )
    p.add_argument("--train-metrics", default="metrics/train", help="folder of <model>.json (validation)")
    p.add_argument("--eval-metrics", default="metrics/eval", help="folder of <model>.json (test, with CIs)")
    p.add_argument("--roc", default="plots/eval", help="folder of <model>/roc.csv and <model>/roc_external.csv")
    p.add_argument("--sweep", default=None, help="metrics/sweep.json (optional)")
    p.add_argument("--sweep-table", default=None, help="plots/sweep.csv (optional)")
    p.add_argument("--checkpoints", default="models", help="folder of <model>/ checkpoints (for the registry)")
    p.add_argument("--report", required=True, help="markdown Results section")
    p.add_argument("--csv", required=True, help="results table CSV")
    p.add_argument("--headline", required=True, help="headline metrics JSON (the DVC metric)")
    p.add_argument("--figures", required=True, help="folder for metrics_bar.png, roc_all.png and roc_external.png")
    p.add_argument(
        "--predictions",
        default=None,
        help="folder of <model>/predictions.csv and <model>/external.csv (per image): the paired comparisons",
    )
    p.add_argument("--paired", default=None, help="paired comparisons JSON (with --predictions)")
    return p.parse_args(argv)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    cfg: CompareConfig = section(params, "compare", CompareConfig)
    mlflow_cfg: MlflowConfig = section(params, "mlflow", MlflowConfig)
    models = (args.models or list(params.get("models") or {})) + tuned_candidates(args)
    train_m, eval_m, rocs, ext_rocs = read_model_results(args, models)
    eval_cfg: EvaluateConfig = section(params, "evaluate", EvaluateConfig)
    selection = select_candidate(
        train_m,
        cfg.select_metric,
        read_validation(args.predictions, list(train_m)) if args.predictions else None,
        n_configs=sweep_configs(args),
        n_resamples=eval_cfg.n_resamples,
        seed=eval_cfg.seed,
        confidence=eval_cfg.confidence,
    )
    best = selection.selected
    write_reports(args, cfg, eval_cfg, train_m, eval_m, selection)
    figs = comparison_figures(cfg, eval_m, rocs, ext_rocs, best)
    outcome = log_and_register(args, cfg, mlflow_cfg, figs, best, train_m, eval_m)
    how = (
        f"validation tie with {', '.join(selection.tied)} decided by preference"
        if selection.tied
        else cfg.select_metric
    )
    print(f"[compare] {len(eval_m)} model(s); selected on {how}: {best}. Report: {args.report}")
    if outcome:
        print(f"[compare] {outcome.message}")
    return 0


def tuned_candidates(args) -> list[str]:
    """The sweep's kept model (``<sweep model>-tuned``), when the sweep ran: a candidate like the others."""
    sweep = _read_json(Path(args.sweep)) if args.sweep else None
    return [tuned_name(sweep["model"])] if sweep and sweep.get("model") else []


def sweep_configs(args) -> dict[str, int]:
    """The sweep's kept candidate -> how many configurations it was the best of (on the same validation images)."""
    sweep = _read_json(Path(args.sweep)) if args.sweep else None
    if not sweep or not sweep.get("model"):
        return {}
    return {tuned_name(sweep["model"]): int(sweep.get("n_configs") or 0)}


def read_model_results(args, models: list[str]) -> tuple[dict, dict, dict, dict]:
    """Train and eval metrics, internal and external ROC tables of every model that has both metrics files."""
    train_m, eval_m, rocs, ext_rocs = {}, {}, {}, {}
    for m in models:
        t = _read_json(Path(args.train_metrics) / f"{m}.json")
        e = _read_json(Path(args.eval_metrics) / f"{m}.json")
        if t is None or e is None:
            warnings.warn(
                f"compare: skipping {m}: missing {'train' if t is None else 'eval'} metrics "
                f"(run `dvc repro {evaluate_stage(m)}`)",
                RuntimeWarning,
                stacklevel=1,
            )
            continue
        train_m[m], eval_m[m] = t, e
        roc_path = Path(args.roc) / m / "roc.csv"
        if roc_path.is_file():
            rocs[m] = pd.read_csv(roc_path)
        ext_path = Path(args.roc) / m / "roc_external.csv"
        if ext_path.is_file():
            ext_rocs[m] = pd.read_csv(ext_path)
    if not eval_m:
        raise ConfigError(
            f"no model has both {args.train_metrics}/<m>.json and {args.eval_metrics}/<m>.json "
            f"for models {models}; run `dvc repro evaluate` first"
        )
    return train_m, eval_m, rocs, ext_rocs


def data_note(args, best: str) -> str | None:
    """A sentence for the top of the report when the selected model was trained on the synthetic demo data."""
    try:
        source = load_card(Path(args.checkpoints) / best).data_source
    except (CheckpointError, FileNotFoundError):  # no checkpoint to read: the report says nothing of the data
        return None
    if not source.synthetic:
        return None
    return (
        f"**Synthetic data.** These models were trained and tested on {source.describe()}, drawn by the "
        "pipeline's own generator, not on radiographs: the numbers show the pipeline at work, not how well a "
        "model reads chest X-rays. `make real` runs the same pipeline on the real dataset (docs/real-data.md)."
    )


def write_reports(args, cfg: CompareConfig, eval_cfg: EvaluateConfig, train_m: dict, eval_m: dict, selection) -> None:
    """reports/results.md and .csv, the paired comparisons (with --predictions) and the headline DVC metrics."""
    best = selection.selected
    sweep = _read_json(Path(args.sweep)) if args.sweep else None
    sweep_table = pd.read_csv(args.sweep_table) if args.sweep_table and Path(args.sweep_table).is_file() else None
    headline_m = eval_m  # metrics/headline.json keeps the model list's order: `dvc exp show`'s columns
    eval_m = {m: eval_m[m] for m in selected_first(list(eval_m), best)}  # the report: the selected model first
    table = results_table(eval_m, train_m, cfg.select_metric, selected=best)
    paired = None
    if args.predictions:
        models = table["model"].tolist()  # by validation, as Table 1
        paired = compare_with_selected(
            {m: read_predictions(args.predictions, m) for m in models},
            table.loc[table["selected"], "model"].item(),
            models,
            n_resamples=eval_cfg.n_resamples,
            seed=eval_cfg.seed,
            confidence=eval_cfg.confidence,
        )
        if args.paired:
            write_metrics(args.paired, {**paired, "selection": selection.as_dict()})
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(
        results_markdown(
            table,
            select_metric=cfg.select_metric,
            eval_metrics=eval_m,
            sweep_summary=sweep,
            sweep_table=sweep_table,
            paired=paired,
            note=data_note(args, best),
            selection=selection_markdown(selection, eval_cfg.confidence),
            tie=bool(selection.tied),
        )
    )
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    write_csv(results_csv(table), args.csv)
    write_metrics(args.headline, headline(headline_m, train_m))


def comparison_figures(cfg: CompareConfig, eval_m: dict, rocs: dict, ext_rocs: dict, best: str) -> dict:
    conf = next(iter(eval_m.values())).get("confidence", 0.95)
    figs = {
        "metrics_bar": metrics_bar_figure(
            bar_table(eval_m, cfg.bar_metrics),
            cfg.bar_metrics,
            title=f"Test metrics at the validation-chosen thresholds, {conf:.0%} bootstrap CIs",
            selected=best,
        )
    }
    if rocs:
        figs["roc_all"] = roc_comparison_figure(roc_curves(rocs, eval_m), selected=best)
        figs["roc_external"] = shift_roc_figure(
            shift_panels(rocs, ext_rocs, eval_m),
            title="Internal test vs external sets, at each model's validation-chosen threshold"
            if ext_rocs and any(len(t) for t in ext_rocs.values())
            else "Internal test (no external set configured: external.sets)",
            selected=best,
        )
    return figs


def log_and_register(args, cfg: CompareConfig, mlflow_cfg: MlflowConfig, figs: dict, best: str, train_m, eval_m):
    """The compare MLflow run (figures, report) and, with compare.register, the selected model's new version."""
    tracker = make_tracker(mlflow_cfg.experiment)
    value = float(train_m[best][cfg.select_metric])
    with tracker.start_run(
        run_name("compare"), tags={"stage": "compare", "selected_model": best, "selected_on": cfg.select_metric}
    ):
        # The models' own metrics live in their training runs; this run holds the comparison.
        tracker.log_metrics({f"selected_{cfg.select_metric}": value})
        for name, fig in figs.items():  # the PNGs as written: MLflow's log_figure would render them again
            tracker.log_artifact(save_figure(fig, Path(args.figures) / f"{name}.png"), "compare")
        tracker.log_artifact(args.report, "compare")
        tracker.log_artifact(args.csv, "compare")
        if not cfg.register_model:
            return None
        outcome = register_candidate(
            tracker,
            Path(args.checkpoints) / best,
            registered_name=mlflow_cfg.registered_model,
            alias=mlflow_cfg.champion_alias,
            select_metric=cfg.select_metric,
            value=value,
            report=eval_m[best],
            lock_path=project_root() / ".dvc" / "tmp" / "cxr-champion.lock",
            promote=cfg.promote,
        )
        tracker.set_tags(
            {"registered_model": f"{outcome.name}/{outcome.version}", "promoted": str(outcome.promoted).lower()}
        )
        return outcome


if __name__ == "__main__":
    run_stage("compare", main, ERRORS)
