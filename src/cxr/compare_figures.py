"""Figures that compare models (stage compare): every model's test ROC on one axes, the metrics bar chart,
each model's internal test vs external sets. Arrays in, Figure out, each model in its ``model_color``.

    fig = roc_comparison_figure({"cnn": (fpr, tpr, 0.99), ...}, selected="resnet_small-tuned")
    save_figure(fig, "figures/compare/roc_all.png")

``selected`` (compare's choice, on validation) comes first in every legend and is marked: "(selected)" after
its name, a wide translucent band under its ROC curve (the curves of the others, drawn over it, stay in sight
where they coincide; each of them a little thinner than the one before) and outlined bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from cxr.plots import draw_roc, figure_grid, model_color, roc_axes

SELECTED = "(selected)"


def selected_first(names: Sequence[str], selected: str | None) -> list[str]:
    """``names`` with ``selected`` (when among them) moved to the front, the others in their order."""
    return sorted(names, key=lambda n: n != selected)


def label(name: str, selected: str | None) -> str:
    return f"{name} {SELECTED}" if name == selected else name


def roc_comparison_figure(
    curves: Mapping[str, tuple], title: str = "ROC curves on the test set", selected: str | None = None
) -> Figure:
    """Every model's ROC on one axes: ``curves`` maps model name -> (fpr, tpr, auc)."""
    if not curves:
        raise ValueError("no ROC curves to draw (are there plots/eval/*/roc.csv files?)")
    fig, axes = figure_grid(6, 6)
    ax = axes[0, 0]
    others = [n for n in curves if n != selected]
    widths = dict(zip(others, np.linspace(3.2, 1.6, len(others)) if len(others) > 1 else [2.0]))
    for name in selected_first(list(curves), selected):
        fpr, tpr, auc = curves[name]
        # the selected: a band under all; the others each a little thinner than the one before, so a curve
        # that another repeats point for point still shows at its edges
        style = {"lw": 7, "alpha": 0.45, "solid_capstyle": "round", "zorder": 1} if name == selected else {}
        style = style or {"lw": float(widths[name]), "zorder": 2}
        draw_roc(ax, fpr, tpr, label(name, selected), auc, color=model_color(name), **style)
    roc_axes(ax, title)
    fig.tight_layout()
    return fig


SET_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))  # internal test, then each external set


def shift_roc_figure(
    panels: Mapping[str, tuple], title: str = "Internal test vs external sets", selected: str | None = None
) -> Figure:
    """One panel per model: its ROC on the internal test and on each external set, with the operating point
    of its (validation-chosen) threshold on each curve: how far a result moves under a change of data.

    ``panels``: model -> (threshold, {curve label -> (fpr, tpr, auc, (op_fpr, op_tpr))}); the first curve
    is the internal test. Each panel is drawn in its model's colour, one line style per set; the legends
    sit under the panels (constrained layout: clear of the curves, the panel titles and the suptitle).
    ``selected``'s panel comes first, its title marked.
    """
    if not panels:
        raise ValueError("no models to draw")
    n = len(panels)
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    fig, axes = figure_grid(5.4 * ncols, 6.6 * nrows, nrows, ncols, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, selected_first(list(panels), selected)):
        threshold, curves = panels[model]
        color = model_color(model)
        for k, (text, (fpr, tpr, auc, (op_fpr, op_tpr))) in enumerate(curves.items()):
            ls, marker = SET_STYLES[k % len(SET_STYLES)]
            draw_roc(ax, fpr, tpr, text, auc, color=color, ls=ls)
            ax.scatter(
                [op_fpr],
                [op_tpr],
                s=70,
                color=color,
                marker=marker,
                edgecolor="black",
                zorder=3,
                label=f"  at the threshold: sensitivity {op_tpr:.0%}, specificity {1 - op_fpr:.0%}",
            )
        roc_axes(ax, f"{label(model, selected)}: threshold {threshold:.3f} (chosen on validation)", legend_below=True)
        ax.set_aspect("auto")  # equal aspect defeats constrained layout: the legend below would overlap
    fig.suptitle(title)
    return fig


def metrics_bar_figure(
    table: Mapping[str, Mapping[str, tuple]],
    metrics: Sequence[str] | None = None,
    title: str = "Test metrics with 95% bootstrap CIs",
    selected: str | None = None,
) -> Figure:
    """Grouped bars: one group per metric, one bar per model (``selected`` first, outlined), CI as error bars.

    ``table``: model -> metric -> (value, ci_low, ci_high); NaN bounds draw no error bar.
    """
    if not table:
        raise ValueError("no models to compare (are there metrics/eval/*.json files?)")
    models = selected_first(list(table), selected)
    metrics = list(metrics or next(iter(table.values())).keys())
    width = 0.8 / len(models)
    x = np.arange(len(metrics))
    fig, axes = figure_grid(max(7.0, 1.5 * len(metrics) + 2), 4.8)
    ax = axes[0, 0]
    for i, m in enumerate(models):
        vals = np.array([table[m].get(k, (np.nan, np.nan, np.nan))[0] for k in metrics], dtype=float)
        lo = np.array([table[m].get(k, (np.nan,) * 3)[1] for k in metrics], dtype=float)
        hi = np.array([table[m].get(k, (np.nan,) * 3)[2] for k in metrics], dtype=float)
        err = np.vstack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)]).clip(min=0)
        offset = (i - (len(models) - 1) / 2) * width
        edge = {"edgecolor": "black", "linewidth": 1.6} if m == selected else {}
        ax.bar(x + offset, vals, width, yerr=err, capsize=3, label=label(m, selected), color=model_color(m), **edge)
    ax.set_xticks(x)
    ax.set_xticklabels([k.replace("_", " ") for k in metrics], rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Value")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="Model", fontsize=9, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig
