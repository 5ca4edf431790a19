"""The compare core: metrics files in, a Results section, comparison figures and a registry entry out.

    table = results_table(eval_metrics, train_metrics)      # one row per model, ordered by validation
    best = select_best(train_metrics, "val_auc")            # chosen on validation, never on test
    text = results_markdown(table, ...)                     # reports/results.md

Run by ``src/compare.py`` (stage ``compare``). Inputs are the pipeline's metrics files:
metrics/train/<m>.json (validation), metrics/eval/<m>.json (test, with bootstrap CIs), metrics/sweep.json
and plots/sweep.csv (validation numbers only), plots/eval/<m>/roc.csv; the paired comparisons with the
selected model (``paired``, from the per-image predictions) come in as a ready report. Test numbers are
reported; the model that goes to the MLflow Model Registry is the one with the best *validation* metric.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cxr.candidates import evaluate_stage, tuned_name
from cxr.evaluation.operating import operating_points_markdown
from cxr.evaluation.paired import paired_markdown
from cxr.evaluation.selective import calibration_markdown, refer_markdown
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


def _num(v) -> float:
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
        row = {k: _num(m.get(k)) for k in SELECT_METRICS}
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
            "val_auc": _num(tm.get("val_auc")),
            "val_loss": _num(tm.get("val_loss")),
            "threshold": _num(rep.get("threshold", at.get("threshold"))),
            "n_test": rep.get("n"),
        }
        for k in metrics:
            row[k] = _num(at[k]["value"])
            row[f"{k}_ci_low"] = _num(at[k]["ci_low"])
            row[f"{k}_ci_high"] = _num(at[k]["ci_high"])
        for set_name, ext in rep.get("external", {}).items():
            for k in EXTERNAL_METRICS:
                v = ext["at_val_threshold"][k]
                row[f"{set_name}_{k}"] = _num(v["value"])
                row[f"{set_name}_{k}_ci_low"], row[f"{set_name}_{k}_ci_high"] = _num(v["ci_low"]), _num(v["ci_high"])
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
                v = _num(train_metrics.get(model, {}).get("val_auc"))
            elif source == "threshold":
                v = _num(rep.get("threshold", at.get("threshold")))
            else:
                v = _num(at[source]["value"])
            out[key][model] = None if math.isnan(v) else round(v, 4)
    sets = external_names(eval_metrics)
    if sets:
        out["ext"] = {name: {key: {} for key, _ in EXTERNAL_HEADLINE} for name in sets}
        for model, rep in eval_metrics.items():
            for name, ext in rep.get("external", {}).items():
                for key, source in EXTERNAL_HEADLINE:
                    v = _num(ext["at_val_threshold"][source]["value"])
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
        panels[name] = (_num(rep.get("threshold")), curves)
    return panels


def bar_table(eval_metrics: dict[str, dict], metrics) -> dict[str, dict[str, tuple]]:
    """model -> metric -> (value, ci_low, ci_high) for ``compare_figures.metrics_bar_figure``."""
    return {
        name: {
            k: (
                _num(rep["at_val_threshold"][k]["value"]),
                _num(rep["at_val_threshold"][k]["ci_low"]),
                _num(rep["at_val_threshold"][k]["ci_high"]),
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


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def _with_ci(row, k: str, percent: bool) -> str:
    fmt = _pct if percent else (lambda v: "n/a" if math.isnan(v) else f"{v:.3f}")
    return f"{fmt(row[k])} ({fmt(row[k + '_ci_low'])}–{fmt(row[k + '_ci_high'])})"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown, tabulate's pipe format), cells as written:
    "1.000" stays "1.000" (no number parsing)."""
    return str(df.to_markdown(index=False, disable_numparse=True))


# The sweep's table in the report: validation numbers only (the sweep has no others). Each configuration's
# balanced accuracy, sensitivity and specificity are at the threshold it chose on the same validation split.
SWEEP_COLUMNS = {
    "val_auc": "val_auc",
    "val_loss": "val_loss",
    "val_balanced_accuracy": "val_bacc",
    "val_sensitivity": "val_sens",
    "val_specificity": "val_spec",
}


def sweep_markdown(sweep_table: pd.DataFrame, select_metric: str) -> str:
    df = sweep_table.copy()
    show = [c for c in ("batch_size", "lr", *SWEEP_COLUMNS, "best_epoch", "selected") if c in df.columns]
    gone = df["diverged"].astype(str).str.lower().eq("true") if "diverged" in df.columns else pd.Series(False, df.index)
    df = df[show]
    for c in SWEEP_COLUMNS:
        if c in df.columns:
            df[c] = df[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:.3f}")
    if "val_loss" in df.columns:  # a loss in the millions says less than the word
        df.loc[gone, "val_loss"] = "diverged"
    if "lr" in df.columns:
        df["lr"] = df["lr"].map(lambda v: f"{float(v):g}")
    if "selected" in df.columns:
        df["selected"] = df["selected"].map(lambda v: "**yes**" if str(v).lower() == "true" else "")
    return markdown_table(df.rename(columns=SWEEP_COLUMNS))


def results_markdown(
    table: pd.DataFrame,
    *,
    select_metric: str = "val_auc",
    eval_metrics: dict | None = None,
    sweep_summary: dict | None = None,
    sweep_table: pd.DataFrame | None = None,
    paired: dict | None = None,
    note: str | None = None,
    selection: list[str] | None = None,
    tie: bool = False,
) -> str:
    """reports/results.md: a Results section in the style of a paper. ``paired`` (``paired.compare_with_selected``)
    adds the paired comparisons with the selected model after the external sets, so that the tables the
    README and docs copy by number (Table 1, Table 2) keep theirs. ``selection``: the paragraph on how the
    selected model was chosen (cxr.evaluation.selection.selection_markdown), after Table 1; ``tie``: validation
    could not separate the leader from another candidate, and that paragraph's rule decided."""
    any_rep: dict[str, Any] = next(iter((eval_metrics or {}).values()), {})
    n, n_pos = any_rep.get("n"), any_rep.get("n_pneumonia")
    conf = any_rep.get("confidence", 0.95)
    n_res = any_rep.get("n_resamples")
    lines = ["# Results", "", *([note, ""] if note else [])]
    if n and n_pos is not None:
        lines += [
            f"Test set: {n} images ({any_rep.get('n_normal')} NORMAL, {n_pos} PNEUMONIA). Answering PNEUMONIA "
            f"for every image would score {100 * n_pos / n:.1f} % accuracy, 100 % sensitivity and 0 % "
            "specificity, so sensitivity, specificity, balanced accuracy and ROC-AUC are reported with accuracy.",
            "",
        ]
    lines += _internal_markdown(table, select_metric, conf, n_res, tie)
    lines += [x for line in selection or [] for x in (line.rstrip("\n"), "")]
    sets = external_names(eval_metrics or {})
    for k, name in enumerate(sets):
        lines += external_markdown(table, name, eval_metrics or {}, table_number=2 + k)
    number = 2 + len(sets)
    if paired is not None:
        lines += paired_markdown(paired, table_number=number)
        number += bool(paired["comparisons"])
    if sweep_table is not None and len(sweep_table):
        lines += _sweep_markdown_section(sweep_table, sweep_summary or {}, table_number=number)
        number += 1
    lines += operating_points_markdown(eval_metrics or {}, table_number=number)
    number += any(r.get("operating_points") for r in (eval_metrics or {}).values())
    calibration = calibration_markdown(eval_metrics or {}, table_number=number)
    lines += calibration + refer_markdown(eval_metrics or {}, table_number=number + bool(calibration))
    lines += [
        "Reference (official 624-image test set): Kermany et al. 2018, InceptionV3 transfer, accuracy 92.8 %, "
        "sensitivity 93.2 %, specificity 90.1 %, AUC 0.968 (checkpoint chosen on test); MedMNIST v2 "
        "ResNet-50 (224 px) accuracy 88.4 %, AUC 0.962 (selection on validation).",
        "",
    ]
    return "\n".join(lines)


def _internal_markdown(
    table: pd.DataFrame, select_metric: str, conf: float, n_res: int | None, tie: bool = False
) -> list[str]:
    """Table 1 (every model on the internal test split) and the sentence on the selected model."""
    sel = table[table["selected"]]
    metric_name = "validation ROC-AUC" if select_metric == "val_auc" else "validation loss"
    lines = [
        f"**Table 1.** Test-set performance of each model at its decision threshold (`evaluate.threshold`: "
        f"Youden's J, the midpoint or fixed, chosen on the validation split). Values in % (ROC-AUC as a "
        f"fraction) with {int(conf * 100)} % "
        f"stratified bootstrap confidence intervals{f' ({n_res} resamples)' if n_res else ''}. The model "
        f"selected on {metric_name} comes first (in bold), the others follow by it; the test split played "
        "no part in training, checkpoint choice, threshold "
        "or model selection.",
        "",
    ]
    t = pd.DataFrame(
        {
            "Model": [f"**{m}**" if s else m for m, s in zip(table["model"], table["selected"])],
            "Val AUC": table["val_auc"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"),
            "Threshold": table["threshold"].map(lambda v: f"{v:.3f}"),
            **{
                TITLES[k]: [_with_ci(r, k, percent=k != "roc_auc") for _, r in table.iterrows()]
                for k in REPORT_METRICS
                if k in table.columns
            },
        }
    )
    lines += [markdown_table(t), ""]
    if not len(sel):
        return lines
    r = sel.iloc[0]
    lines += [
        (
            f"The selected model is **{r['model']}**, decided by the tie rule below: {metric_name} cannot separate "
            f"it from the leader (its validation ROC-AUC {r['val_auc']:.3f})."
            if tie
            else f"The model selected on {metric_name} is **{r['model']}** (validation ROC-AUC {r['val_auc']:.3f})."
        )
        + f" On the test set it reaches accuracy {_with_ci(r, 'accuracy', True)} %, "
        f"sensitivity {_with_ci(r, 'sensitivity', True)} %, specificity {_with_ci(r, 'specificity', True)} % "
        f"and ROC-AUC {_with_ci(r, 'roc_auc', False)}.",
        "",
    ]
    best_test = table.loc[table["roc_auc"].idxmax(), "model"] if table["roc_auc"].notna().any() else None
    if best_test is not None and best_test != r["model"]:
        lines += [
            f"The highest *test* ROC-AUC belongs to {best_test}; choosing it for that reason would report "
            "an optimistically biased number, so the selection stays with validation.",
            "",
        ]
    return lines


def _sweep_markdown_section(sweep_table: pd.DataFrame, s: dict[str, Any], table_number: int) -> list[str]:
    b = s.get("best", {})
    model = s.get("model", "model")
    tuned = tuned_name(model)
    lines = [
        "## Batch size x learning rate sweep",
        "",
        f"**Table {table_number}.** {model}: every configuration trained from a fresh initialisation; "
        f"selection on {s.get('select_metric', 'val_auc')}. Every column is a validation number (val_bacc, "
        "val_sens, val_spec: at the threshold each configuration chose on the same validation split, so "
        "optimistic); the sweep never sees the test split. The selected configuration, kept as "
        f"{tuned}, is scored on it once, by `{evaluate_stage(tuned)}`, as a candidate beside the other models.",
        "",
        sweep_markdown(sweep_table, s.get("select_metric", "val_auc")),
        "",
    ]
    if b:
        lines += [
            f"Selected: batch size {b.get('batch_size')}, learning rate {float(b.get('lr')):g} "
            f"(validation ROC-AUC {_num(b.get('val_auc')):.3f}).",
            "",
        ]
    return lines


def external_markdown(table: pd.DataFrame, name: str, eval_metrics: dict, table_number: int) -> list[str]:
    """The internal test beside external set ``name`` at the same threshold, with the gap in ROC-AUC."""
    if f"{name}_roc_auc" not in table.columns:
        return []
    rep = next(r["external"][name] for r in eval_metrics.values() if name in r.get("external", {}))
    t = pd.DataFrame(
        {
            "Model": [f"**{m}**" if s else m for m, s in zip(table["model"], table["selected"])],
            "Threshold": table["threshold"].map(lambda v: f"{v:.3f}"),
            "ROC-AUC internal": table["roc_auc"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"),
            f"ROC-AUC {name}": [_with_ci(r, f"{name}_roc_auc", False) for _, r in table.iterrows()],
            "Gap": (table[f"{name}_roc_auc"] - table["roc_auc"]).map(lambda v: "n/a" if math.isnan(v) else f"{v:+.3f}"),
            "Accuracy internal": table["accuracy"].map(_pct),
            f"Accuracy {name}": [_with_ci(r, f"{name}_accuracy", True) for _, r in table.iterrows()],
            "Bal. acc. internal": table["balanced_accuracy"].map(_pct),
            f"Bal. acc. {name}": [_with_ci(r, f"{name}_balanced_accuracy", True) for _, r in table.iterrows()],
            f"Sensitivity {name}": [_with_ci(r, f"{name}_sensitivity", True) for _, r in table.iterrows()],
            f"Specificity {name}": [_with_ci(r, f"{name}_specificity", True) for _, r in table.iterrows()],
        }
    )
    return [
        f"## External validation: {name}",
        "",
        f"**Table {table_number}.** {name}: {rep['n']} images ({rep.get('n_normal')} NORMAL, "
        f"{rep.get('n_pneumonia')} PNEUMONIA), decoded like the run's own data and never used for any choice: each "
        "model at the threshold it chose on validation, beside its internal test result. Gap: external minus "
        "internal ROC-AUC. Values in % (ROC-AUC as a fraction) with bootstrap CIs. Figure: "
        "figures/compare/roc_external.png (both ROC curves, the threshold's operating point on each).",
        "",
        markdown_table(t),
        "",
    ]


def results_csv(table: pd.DataFrame) -> pd.DataFrame:
    """reports/results.csv: the table with plain numbers, rounded."""
    return table.round(4)


# --------------------------------------------------------------------------------------------
# MLflow Model Registry
# --------------------------------------------------------------------------------------------
