"""Figures for the pipeline: every function takes arrays (or small tables) and returns a Figure.

    fig = confusion_matrix_figure(y_true, y_pred)
    save_figure(fig, "figures/eval/cnn/confusion.png")    # the stage decides where files go

Nothing here reads or writes data files; ``save_figure`` is the one helper that touches disk, and
only where the caller says. The Agg backend is selected so figures render on headless machines.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, DVC stages, remote GPUs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cxr import CLASSES  # noqa: E402

DPI = 110


# The figures are git-tracked DVC outputs (cache: false), so a PNG must be a function of its data
# only: no "Software" text chunk (a matplotlib upgrade alone would change every file's bytes).
PNG_METADATA = {"Software": None}


# One colour per model in every figure, whichever models ran: never a colour by position in a list.
MODEL_COLORS = {
    "cnn": "#1f77b4",
    "resnet_small": "#ff7f0e",
    "resnet50": "#2ca02c",
    "vgg16": "#d62728",
    "vit": "#9467bd",
}
# Other names (a tuned "resnet50-tuned", a new model) hash into colours none of the above uses (nor grey: chance).
EXTRA_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#1b9e77", "#7570b3", "#e6ab02", "#a6761d")


def model_color(name: str) -> str:
    """The colour of model ``name`` in every figure: fixed for the known models, a stable hash otherwise."""
    return MODEL_COLORS.get(name) or EXTRA_COLORS[zlib.crc32(name.encode()) % len(EXTRA_COLORS)]


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG (parents created) and close it, so long loops do not leak figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
    return path


def figure_grid(w: float, h: float, nrows: int = 1, ncols: int = 1, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), dpi=DPI, squeeze=False, **kw)
    return fig, axes


# --------------------------------------------------------------------------------------------
# Test-set diagnostics
# --------------------------------------------------------------------------------------------


def confusion_matrix_figure(
    y_true, y_pred, class_names: Sequence[str] = CLASSES, title: str = "Confusion matrix"
) -> Figure:
    """Counts, coloured by each cell's share of the *actual* class (row percentage), which each cell also shows."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    k = len(class_names)
    cm = confusion_matrix(np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int), labels=range(k))
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) * 100
    fig, axes = figure_grid(5.2, 4.6, layout="constrained")
    ax = axes[0, 0]
    shown = ConfusionMatrixDisplay(pct, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0, "vmax": 100}
    )
    for (i, j), text in np.ndenumerate(shown.text_):
        text.set_text(f"{cm[i, j]}\n{pct[i, j]:.1f}% of row")
    fig.colorbar(shown.im_, ax=ax, label="% of actual class")
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    fig.suptitle(f"{title}\n(n = {cm.sum()} images)")  # centred on the figure: clear of the colour bar
    return fig


def draw_roc(ax, fpr, tpr, label: str, auc: float | None, **kw) -> None:
    """One ROC curve (sklearn's RocCurveDisplay), its AUC to three decimals in the legend."""
    from sklearn.metrics import RocCurveDisplay

    text = label if auc is None else f"{label} (AUC = {auc:.3f})"
    RocCurveDisplay(fpr=np.asarray(fpr), tpr=np.asarray(tpr), name=text).plot(ax=ax, curve_kwargs={"lw": 2, **kw})


def roc_axes(ax, title: str, legend_below: bool = False) -> None:
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="Chance (AUC = 0.500)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    if legend_below:  # outside the axes: a legend in the corner would cover a poor model's curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8.5, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=9)


def roc_figure(
    fpr,
    tpr,
    auc: float | None = None,
    label: str = "model",
    operating_point: tuple[float, float] | None = None,
    title: str = "ROC curve (test)",
    targets: Sequence[tuple[str, float, float]] = (),
) -> Figure:
    """One ROC curve with its AUC in the legend and the chance diagonal, in the colour of model ``label``.

    ``operating_point`` = (fpr, tpr) at the chosen threshold, marked on the curve; ``targets``: (label,
    fpr, tpr) of the operating points set on validation (evaluate.operating_points), where they landed.
    """
    fig, axes = figure_grid(5.2, 5.2)
    ax = axes[0, 0]
    draw_roc(ax, fpr, tpr, label, auc, color=model_color(label))
    if operating_point is not None:
        op_x, op_y = [operating_point[0]], [operating_point[1]]  # black: red is vgg16's colour
        ax.scatter(op_x, op_y, s=60, c="black", edgecolor="white", zorder=3, label="Chosen threshold")
    for (text, fpr_t, tpr_t), marker in zip(targets, ("^", "s", "D", "v", "P")):
        ax.scatter([fpr_t], [tpr_t], s=55, marker=marker, facecolor="white", edgecolor="black", zorder=4, label=text)
    roc_axes(ax, title)
    fig.tight_layout()
    return fig


def pr_figure(
    recall,
    precision,
    ap: float | None = None,
    prevalence: float | None = None,
    label: str = "model",
    title: str = "Precision-recall curve (test)",
) -> Figure:
    """Precision-recall curve (sklearn's PrecisionRecallDisplay) in model ``label``'s colour; ``prevalence``
    (share of PNEUMONIA) is the no-skill line."""
    from sklearn.metrics import PrecisionRecallDisplay

    fig, axes = figure_grid(5.2, 5.2)
    ax = axes[0, 0]
    text = label if ap is None else f"{label} (AP = {ap:.3f})"
    PrecisionRecallDisplay(np.asarray(precision), np.asarray(recall), name=text, prevalence_pos_label=prevalence).plot(
        ax=ax,
        curve_kwargs={"lw": 2, "color": model_color(label)},
        plot_chance_level=prevalence is not None,
        chance_level_kw={"ls": "--", "c": "grey", "lw": 1, "label": f"No skill (prevalence = {prevalence or 0:.2f})"},
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    return fig


def draw_reliability(ax, mean_predicted, fraction_positive, label: str, **kw) -> None:
    """One reliability curve (sklearn's CalibrationDisplay) and, once per axes, the perfectly calibrated line;
    axis labels already set stay."""
    from sklearn.calibration import CalibrationDisplay

    labels = ax.get_xlabel(), ax.get_ylabel()
    CalibrationDisplay(np.asarray(fraction_positive), np.asarray(mean_predicted), None).plot(
        ax=ax, name=label, **{"marker": "o", "lw": 2, **kw}
    )
    if any(labels):
        ax.set(xlabel=labels[0], ylabel=labels[1])


def calibration_figure(
    mean_predicted,
    fraction_positive,
    counts=None,
    ece: float | None = None,
    title: str = "Reliability diagram (test)",
    label: str = "Model",
) -> Figure:
    """Reliability diagram: observed PNEUMONIA share vs mean predicted probability per bin, in the colour
    of model ``label``. With ``counts``, a lower panel shows how many images fall in each bin (sparse bins
    are noisy)."""
    fig, axes = figure_grid(
        5.2,
        6.2 if counts is not None else 5.2,
        nrows=2 if counts is not None else 1,
        gridspec_kw={"height_ratios": [3, 1]} if counts is not None else None,
    )
    ax = axes[0, 0]
    color = model_color(label)
    text = label if ece is None else f"{label} (ECE = {ece:.3f})"
    draw_reliability(ax, mean_predicted, fraction_positive, text, color=color)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed fraction PNEUMONIA")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    if counts is not None:
        ax.set_xlabel("")
        bx = axes[1, 0]
        bx.bar(mean_predicted, counts, width=0.06, color=color, alpha=0.7)
        bx.set_xlim(0, 1)
        bx.set_xlabel("Mean predicted P(pneumonia)")
        bx.set_ylabel("Images")
    else:
        ax.set_xlabel("Mean predicted P(pneumonia)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def training_curves_figure(
    history, best_epoch: int | None = None, title: str = "Training curves", acc_threshold: float = 0.5
) -> Figure:
    """Loss, accuracy (P(pneumonia) >= ``acc_threshold`` called PNEUMONIA, as training computes it) and
    validation AUC per epoch, train vs validation.

    ``history``: a DataFrame or mapping of equal-length columns, with ``epoch`` and any of
    train_loss, val_loss, train_acc, val_acc, val_auc (missing ones are skipped).
    """
    cols = (
        {k: np.asarray(history[k], dtype=float) for k in history.keys()}
        if not hasattr(history, "columns")
        else {k: history[k].to_numpy(dtype=float) for k in history.columns}
    )
    if "epoch" not in cols or len(cols["epoch"]) == 0:
        raise ValueError(f"history needs an 'epoch' column and at least one row; found columns {sorted(cols)}")
    epoch = cols["epoch"]
    panels = [
        ("Loss", [("train_loss", "Train"), ("val_loss", "Validation")], "BCE loss"),
        (f"Accuracy at threshold {acc_threshold:g}", [("train_acc", "Train"), ("val_acc", "Validation")], "Accuracy"),
        ("Validation ROC-AUC", [("val_auc", "Validation")], "ROC-AUC"),
    ]
    fig, axes = figure_grid(13, 3.8, ncols=3)
    for ax, (name, series, ylabel) in zip(axes[0], panels):
        drawn = False
        for key, label in series:
            if key in cols:
                ax.plot(epoch, cols[key], marker="o", lw=2, label=label)
                drawn = True
        if best_epoch is not None:
            ax.axvline(best_epoch, ls=":", c="grey", label=f"Kept epoch ({best_epoch})")
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def augmentation_figure(originals, augmented, title: str = "Original vs augmented (training transforms)") -> Figure:
    """Each row: an original image, then its augmented draws.

    ``originals``: (N, H, W) uint8; ``augmented``: (N, K, h, w) floats in [0, 1] (BatchAugment's
    output), drawn on the same fixed grey scale so brightness and contrast jitter stay visible.
    """
    originals = np.asarray(originals)
    augmented = np.asarray(augmented)
    if augmented.ndim != 4 or len(augmented) != len(originals):
        raise ValueError(f"augmented must be (N, K, h, w) with N = {len(originals)}, found {augmented.shape}")
    n, k = augmented.shape[:2]
    fig, axes = figure_grid(1.9 * (k + 1), 1.9 * n + 0.6, nrows=n, ncols=k + 1)
    for i in range(n):
        axes[i, 0].imshow(originals[i], cmap="gray", vmin=0, vmax=255)
        for j in range(k):
            axes[i, j + 1].imshow(augmented[i, j], cmap="gray", vmin=0.0, vmax=1.0)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("Original", fontsize=10)
    for j in range(k):
        axes[0, j + 1].set_title(f"Augmented #{j + 1}", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The sweep (figures that compare models: cxr.compare_figures)
# --------------------------------------------------------------------------------------------


def sweep_heatmap_figure(
    batch_sizes: Sequence[int],
    lrs: Sequence[float],
    values,
    metric: str = "val_auc",
    selected: tuple[int, float] | None = None,
    title: str | None = None,
    diverged=None,
) -> Figure:
    """Annotated heatmap of ``values[i, j]`` for batch_sizes[i] x lrs[j], both axes in numeric order; the
    selected cell is outlined. ``diverged`` (same shape, bool) cells are grey, hatched and say "diverged"
    (their values never colour the scale); other NaN cells say "no result"."""
    values = np.asarray(values, dtype=float)
    if values.shape != (len(batch_sizes), len(lrs)):
        raise ValueError(
            f"values must be (len(batch_sizes), len(lrs)) = ({len(batch_sizes)}, {len(lrs)}), found {values.shape}"
        )
    rows, cols = np.argsort([int(b) for b in batch_sizes]), np.argsort([float(v) for v in lrs])
    bad = np.zeros(values.shape, bool) if diverged is None else np.asarray(diverged, dtype=bool)
    values, bad = values[np.ix_(rows, cols)], bad[np.ix_(rows, cols)]
    batch_sizes, lrs = [int(batch_sizes[i]) for i in rows], [float(lrs[j]) for j in cols]
    values[bad] = np.nan
    fig, axes = figure_grid(1.6 * len(lrs) + 2.4, 1.0 * len(batch_sizes) + 1.8)
    ax = axes[0, 0]
    import seaborn as sns  # here: 1 s to import, for one figure

    sns.heatmap(
        values,
        annot=True,
        fmt=".3f",
        cmap="viridis",
        ax=ax,
        cbar_kws={"label": metric},
        xticklabels=[f"{lr:g}" for lr in lrs],
        yticklabels=[str(b) for b in batch_sizes],
        linewidths=0.5,
    )
    for i, j in zip(*np.nonzero(np.isnan(values))):  # no colour: a grey cell and a word
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fc="0.85", ec="0.55", hatch="//" if bad[i, j] else None, lw=0.5))
        word = "diverged" if bad[i, j] else "no result"
        ax.text(
            j + 0.5, i + 0.5, word, ha="center", va="center", color="0.15", fontsize=9, bbox={"fc": "0.85", "lw": 0}
        )
    if selected is not None:
        i, j = batch_sizes.index(int(selected[0])), lrs.index(float(selected[1]))
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, ec="red", lw=3))
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Batch size")
    ax.set_title(title or f"Sweep: {metric} (red box = selected on validation)")
    fig.tight_layout()
    return fig
