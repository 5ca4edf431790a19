"""reports/results.md: the compare stage's tables (:mod:`cxr.evaluation.compare`) as the Results section.

    text = results_markdown(table, eval_metrics=..., sweep_summary=..., sweep_table=..., paired=...)

Test numbers with their bootstrap CIs, the sweep's validation-only table, external sets, operating points,
calibration and the refer band, each table numbered in order; cells are written as formatted ("1.000"
stays "1.000").
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cxr.candidates import evaluate_stage, tuned_name
from cxr.evaluation.compare import REPORT_METRICS, TITLES, external_names, number
from cxr.evaluation.operating import operating_points_markdown
from cxr.evaluation.paired import paired_markdown
from cxr.evaluation.selective import calibration_markdown, refer_markdown


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
            f"(validation ROC-AUC {number(b.get('val_auc')):.3f}).",
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
