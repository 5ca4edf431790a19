"""The compare core: metrics files in, a Results section, comparison figures and a registry entry out.

    table = results_table(eval_metrics, train_metrics)      # one row per model, ordered by validation
    best = select_best(train_metrics, "val_auc")            # chosen on validation, never on test
    text = results_markdown(table, ...)                     # reports/results.md (cxr.evaluation.report)

Run by ``src/compare.py`` (stage ``compare``). Inputs are the pipeline's metrics files:
metrics/train/<m>.json (validation), metrics/eval/<m>.json (test, with bootstrap CIs), metrics/sweep.json
and plots/sweep.csv (validation numbers only), plots/eval/<m>/roc.csv; the paired comparisons with the
selected model (``paired``, from the per-image predictions) come in as a ready report. Test numbers are
reported; the model that goes to the MLflow Model Registry is the one with the best *validation* metric.
"""

from __future__ import annotations

import math

import pandas as pd

from cxr.metrics import SELECT_METRICS, row_is_better

REPORT_METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc", "f1")
TITLES = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC-AUC",
    "f1": "F1",
    "precision": "Precision",
    "pr_auc": "PR-AUC",
    "brier": "Brier",
    "ece": "ECE",
}


def number(v) -> float:
    """A metric as a float; NaN where it is missing (None)."""
    return float("nan") if v is None else float(v)


def select_best(train_metrics: dict[str, dict], metric: str = "val_auc") -> str:
    """The model with the best validation ``metric`` (val_auc: highest; val_loss: lowest; a tie: the other
    one); NaN never wins."""
    if not train_metrics:
        raise ValueError("no training metrics found (metrics/train/<model>.json); run `dvc repro train` first")
    best = None
    for name, m in train_metrics.items():
        if metric not in m:
            raise ValueError(f"metrics/train/{name}.json has no {metric!r} (keys: {sorted(m)})")
        row = {k: number(m.get(k)) for k in SELECT_METRICS}
        if not math.isnan(row[metric]) and row_is_better(row, best and best[0], metric):
            best = (row, name)
    if best is None:
        raise ValueError(f"every model's {metric} is missing or NaN: cannot select one on validation")
    return best[1]  # a tie on both metrics: the first in the order given


def results_table(
    eval_metrics: dict[str, dict],
    train_metrics: dict[str, dict],
    select_metric: str = "val_auc",
    metrics=REPORT_METRICS,
    selected: str | None = None,
) -> pd.DataFrame:
    """One row per evaluated model: the selected one first, then by the validation metric (best first).

    Columns: model, val_auc, val_loss, threshold, n_test, then <metric>, <metric>_ci_low,
    <metric>_ci_high for each metric (test, at the validation-chosen threshold), <set>_<metric> (and its
    CI) for each external set and EXTERNAL_METRICS, at the same threshold, and selected (``selected``: compare's
    choice, cxr.evaluation.selection; default: the best validation metric).
    """
    if not eval_metrics:
        raise ValueError("no evaluation metrics found (metrics/eval/<model>.json); run `dvc repro evaluate` first")
    best = selected or (
        select_best({m: train_metrics[m] for m in eval_metrics if m in train_metrics}, select_metric)
        if any(m in train_metrics for m in eval_metrics)
        else None
    )
    rows = []
    for name, rep in eval_metrics.items():
        tm = train_metrics.get(name, {})
        at = rep["at_val_threshold"]
        row = {
            "model": name,
            "val_auc": number(tm.get("val_auc")),
            "val_loss": number(tm.get("val_loss")),
            "threshold": number(rep.get("threshold", at.get("threshold"))),
            "n_test": rep.get("n"),
        }
        for k in metrics:
            row[k] = number(at[k]["value"])
            row[f"{k}_ci_low"] = number(at[k]["ci_low"])
            row[f"{k}_ci_high"] = number(at[k]["ci_high"])
        for set_name, ext in rep.get("external", {}).items():
            for k in EXTERNAL_METRICS:
                v = ext["at_val_threshold"][k]
                row[f"{set_name}_{k}"] = number(v["value"])
                row[f"{set_name}_{k}_ci_low"], row[f"{set_name}_{k}_ci_high"] = (
                    number(v["ci_low"]),
                    number(v["ci_high"]),
                )
        row["selected"] = name == best
        rows.append(row)
    table = pd.DataFrame(rows)
    ascending = select_metric == "val_loss"
    table = table.sort_values(select_metric, ascending=ascending, na_position="last", kind="stable")
    # The selected model first (on a tie of the metric, the comparator's other metric chose it), then by the metric
    return pd.concat([table[table["selected"]], table[~table["selected"]]]).reset_index(drop=True)


HEADLINE = (
    ("val_auc", None),
    ("auc", "roc_auc"),
    ("acc", "accuracy"),
    ("bacc", "balanced_accuracy"),
    ("sens", "sensitivity"),
    ("spec", "specificity"),
    ("thr", "threshold"),
)
EXTERNAL_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
EXTERNAL_HEADLINE = (("auc", "roc_auc"), ("acc", "accuracy"), ("bacc", "balanced_accuracy"))


def external_names(eval_metrics: dict[str, dict]) -> list[str]:
    """The external sets the models were scored on, in the order they first appear."""
    names: dict[str, None] = {}
    for rep in eval_metrics.values():
        names.update(dict.fromkeys(rep.get("external", {})))
    return list(names)


def headline(eval_metrics: dict[str, dict], train_metrics: dict[str, dict]) -> dict:
    """metrics/headline.json, the one DVC metric: {val_auc: {model: ...}, auc: {...}, acc, sens, spec, thr}.

    Grouped by metric, so `dvc exp show` lists every model's validation and test ROC-AUC first and they
    fit a 160-column terminal beside the experiment names; every column name is unique
    (``--sort-by val_auc.cnn``). ``auc``, ``acc``, ``sens``, ``spec`` are test values at ``thr``, the
    threshold chosen on validation; CIs and the rest are in metrics/eval/<model>.json. ``ext.<set>`` holds
    the same model's auc, acc and bacc on each external set, at the same threshold.
    """
    out: dict[str, dict] = {key: {} for key, _ in HEADLINE}
    for model, rep in eval_metrics.items():
        at = rep["at_val_threshold"]
        for key, source in HEADLINE:
            if source is None:
                v = number(train_metrics.get(model, {}).get("val_auc"))
            elif source == "threshold":
                v = number(rep.get("threshold", at.get("threshold")))
            else:
                v = number(at[source]["value"])
            out[key][model] = None if math.isnan(v) else round(v, 4)
    sets = external_names(eval_metrics)
    if sets:
        out["ext"] = {name: {key: {} for key, _ in EXTERNAL_HEADLINE} for name in sets}
        for model, rep in eval_metrics.items():
            for name, ext in rep.get("external", {}).items():
                for key, source in EXTERNAL_HEADLINE:
                    v = number(ext["at_val_threshold"][source]["value"])
                    out["ext"][name][key][model] = None if math.isnan(v) else round(v, 4)
    return out


def shift_panels(
    rocs: dict[str, pd.DataFrame], external_rocs: dict[str, pd.DataFrame], eval_metrics: dict[str, dict]
) -> dict[str, tuple]:
    """model -> panel of ``compare_figures.shift_roc_figure``: the internal test's ROC, then each external set's,
    with the operating point of the model's threshold on each (from metrics/eval/<model>.json)."""

    def curve(df: pd.DataFrame, rep: dict) -> tuple:
        at = rep["at_val_threshold"]
        point = (1 - at["specificity"]["value"], at["sensitivity"]["value"])
        return df["fpr"].to_numpy(), df["tpr"].to_numpy(), at["roc_auc"]["value"], point

    panels = {}
    for name, roc in rocs.items():
        rep = eval_metrics[name]
        curves = {f"internal test (n={rep['n']})": curve(roc, rep)}
        ext_roc = external_rocs.get(name)
        for set_name, ext in rep.get("external", {}).items():
            if ext_roc is not None and (ext_roc["set"] == set_name).any():
                curves[f"{set_name} (n={ext['n']})"] = curve(ext_roc[ext_roc["set"] == set_name], ext)
        panels[name] = (number(rep.get("threshold")), curves)
    return panels


def bar_table(eval_metrics: dict[str, dict], metrics) -> dict[str, dict[str, tuple]]:
    """model -> metric -> (value, ci_low, ci_high) for ``compare_figures.metrics_bar_figure``."""
    return {
        name: {
            k: (
                number(rep["at_val_threshold"][k]["value"]),
                number(rep["at_val_threshold"][k]["ci_low"]),
                number(rep["at_val_threshold"][k]["ci_high"]),
            )
            for k in metrics
        }
        for name, rep in eval_metrics.items()
    }


def roc_curves(roc_tables: dict[str, pd.DataFrame], eval_metrics: dict[str, dict]) -> dict[str, tuple]:
    """model -> (fpr, tpr, auc) for ``compare_figures.roc_comparison_figure``."""
    out = {}
    for name, df in roc_tables.items():
        auc = eval_metrics.get(name, {}).get("at_val_threshold", {}).get("roc_auc", {}).get("value")
        out[name] = (df["fpr"].to_numpy(), df["tpr"].to_numpy(), None if auc is None else float(auc))
    return out


def results_csv(table: pd.DataFrame) -> pd.DataFrame:
    """reports/results.csv: the table with plain numbers, rounded."""
    return table.round(4)
