"""Plot functions return Figures with the expected axes, titles and data; save_figure writes a PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cxr import compare_figures as CF
from cxr import plots as P


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_confusion_matrix_counts_and_row_percentages():
    fig = P.confusion_matrix_figure([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["2\n66.7% of row", "1\n33.3% of row", "0\n0.0% of row", "2\n100.0% of row"]
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "Actual"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["NORMAL", "PNEUMONIA"]
    assert "n = 5" in fig._suptitle.get_text()


def _extents(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def test_confusion_matrix_title_clear_of_the_colour_bar():
    fig = P.confusion_matrix_figure(
        [0, 1] * 50, [0, 1] * 50, title="resnet_small: test confusion matrix at threshold 0.325"
    )
    fig.canvas.draw()
    colour_bar = fig.axes[1].get_tightbbox(fig.canvas.get_renderer())  # with its tick labels ("100")
    titles = [t for t in (fig._suptitle, *(ax.title for ax in fig.axes)) if t is not None and t.get_text()]
    assert titles and not any(box.overlaps(colour_bar) for box in _extents(fig, titles))


def test_roc_figure_has_auc_legend_chance_line_and_operating_point():
    fig = P.roc_figure([0, 0.2, 1], [0, 0.8, 1], auc=0.8, label="cnn", operating_point=(0.2, 0.8))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cnn (AUC = 0.800)" in labels and any("Chance" in s for s in labels) and "Chosen threshold" in labels
    assert "False positive rate" in ax.get_xlabel() and "sensitivity" in ax.get_ylabel()


ALL_MODELS = ("cnn", "resnet_small", "resnet50", "vgg16", "vit")


def _line_colours(ax) -> dict[str, str]:
    from matplotlib.colors import to_hex

    return {line.get_label().split(" (")[0]: to_hex(line.get_color()) for line in ax.lines}


def test_a_model_keeps_its_colour_whatever_models_ran():
    def roc(models):
        curves = {m: (np.array([0, 0.5, 1]), np.array([0, 0.9, 1]), 0.7) for m in models}
        return _line_colours(CF.roc_comparison_figure(curves).axes[0])

    few, many = roc(["cnn", "resnet50"]), roc(list(ALL_MODELS))
    assert few["resnet50"] == many["resnet50"] and few["cnn"] == many["cnn"]
    assert len({many[m] for m in ALL_MODELS}) == len(ALL_MODELS)  # five models, five colours
    assert roc(["resnet50"])["resnet50"] == roc(["vit", "resnet50", "resnet50-tuned"])["resnet50"]

    def bars(models):
        from matplotlib.colors import to_hex

        table = {m: {"accuracy": (0.8, 0.7, 0.9)} for m in models}
        ax = CF.metrics_bar_figure(table).axes[0]
        return {m: to_hex(patch.get_facecolor()) for m, patch in zip(models, ax.patches)}

    assert bars(["vgg16", "vit"])["vit"] == bars(list(ALL_MODELS))["vit"] == many["vit"]
    one = P.calibration_figure([0.1, 0.9], [0.0, 1.0], label="vgg16").axes[0]
    assert _line_colours(one)["vgg16"] == many["vgg16"]
    assert _line_colours(P.pr_figure([0, 1], [1, 0.5], label="cnn").axes[0])["cnn"] == many["cnn"]


def test_an_unknown_model_name_gets_a_stable_colour_of_its_own():
    assert P.model_color("resnet50-tuned") == P.model_color("resnet50-tuned")
    assert P.model_color("resnet50-tuned") not in {P.model_color(m) for m in ALL_MODELS}
    # crc32, not hash(): the same colour in every process, whatever PYTHONHASHSEED
    assert P.model_color("resnet50-tuned") == P.EXTRA_COLORS[__import__("zlib").crc32(b"resnet50-tuned") % 8]


def test_external_roc_layout_legends_and_titles_clear_of_each_other():
    fpr = np.linspace(0, 1, 20)
    curves = {
        "internal test (n=100)": (fpr, fpr**0.2, 0.95, (0.1, 0.9)),
        "shifted (n=118)": (fpr, fpr, 0.5, (0.5, 0.5)),
    }
    fig = CF.shift_roc_figure({m: (0.4, curves) for m in ALL_MODELS}, title="Internal test vs external sets")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legends, titles = [ax.get_legend() for ax in axes], [fig._suptitle] + [ax.title for ax in axes]
    boxes = _extents(fig, legends + titles)
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    plot_areas = [ax.get_window_extent() for ax in axes]
    assert not any(leg.overlaps(area) for leg in boxes[: len(legends)] for area in plot_areas)  # curves uncovered
    colours = [_line_colours(ax) for ax in axes]
    assert [c["internal test"] for c in colours] == [P.model_color(m) for m in ALL_MODELS]


def test_roc_comparison_draws_one_line_per_model_plus_chance():
    curves = {m: (np.array([0, 0.5, 1]), np.array([0, 0.9, 1]), 0.7) for m in ("cnn", "resnet50", "vit")}
    ax = CF.roc_comparison_figure(curves).axes[0]
    assert len(ax.lines) == 4
    with pytest.raises(ValueError, match="roc.csv"):
        CF.roc_comparison_figure({})


def test_pr_and_calibration_figures():
    ax = P.pr_figure([0, 0.5, 1], [1, 0.9, 0.6], ap=0.85, prevalence=0.6).axes[0]
    assert any("AP = 0.850" in t.get_text() for t in ax.get_legend().get_texts())
    assert ax.get_xlabel().startswith("Recall")
    fig = P.calibration_figure([0.1, 0.5, 0.9], [0.0, 0.6, 1.0], counts=[5, 3, 8], ece=0.05)
    assert len(fig.axes) == 2  # reliability curve + bin counts
    assert any("ECE = 0.050" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_training_curves_from_history_table():
    h = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [0.7, 0.5, 0.4],
            "val_loss": [0.6, 0.55, 0.58],
            "train_acc": [0.6, 0.7, 0.8],
            "val_acc": [0.6, 0.7, 0.7],
            "val_auc": [0.7, 0.8, 0.79],
        }
    )
    fig = P.training_curves_figure(h, best_epoch=2)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy at threshold 0.5", "Validation ROC-AUC"]
    loss_ax = fig.axes[0]
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [0.6, 0.55, 0.58])  # validation loss
    with pytest.raises(ValueError, match="epoch"):
        P.training_curves_figure(pd.DataFrame({"loss": [1.0]}))


def test_augmentation_figure():
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 255, (2, 16, 16), dtype=np.uint8)
    fig = P.augmentation_figure(originals, rng.random((2, 3, 12, 12)))
    assert len(fig.axes) == 2 * 4 and fig.axes[0].get_title() == "Original"
    with pytest.raises(ValueError, match="augmented"):
        P.augmentation_figure(originals, rng.random((3, 3, 12, 12)))


def test_metrics_bar_with_ci_error_bars():
    table = {
        "cnn": {"accuracy": (0.8, 0.75, 0.85), "roc_auc": (0.9, 0.88, 0.92)},
        "vit": {"accuracy": (0.7, 0.6, 0.8), "roc_auc": (0.85, float("nan"), float("nan"))},
    }
    ax = CF.metrics_bar_figure(table).axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.7, 0.8, 0.85, 0.9]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cnn", "vit"]
    from matplotlib.container import ErrorbarContainer

    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errs) == 2  # one set of CI bars per model
    segments = errs[0].lines[2][0].get_segments()  # cnn: accuracy, roc_auc
    np.testing.assert_allclose([segments[0][0][1], segments[0][1][1]], [0.75, 0.85])


def test_sweep_heatmap_annotated_and_selected_cell_outlined():
    vals = np.array([[0.7, 0.8], [0.9, 0.6]])
    ax = P.sweep_heatmap_figure([16, 32], [1e-4, 1e-3], vals, selected=(32, 1e-3)).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.700", "0.800", "0.900", "0.600"]
    assert ax.get_xlabel() == "Learning rate" and ax.get_ylabel() == "Batch size"
    rect = [p for p in ax.patches if isinstance(p, plt.Rectangle) and p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(rect) == 1 and rect[0].get_xy() == (1, 1)
    with pytest.raises(ValueError, match="values must be"):
        P.sweep_heatmap_figure([16], [1e-3, 1e-4], vals)


def test_sweep_heatmap_orders_learning_rates_numerically_and_marks_diverged_cells():
    lrs = [1e-3, 1e-4, 1e-2]  # as a grid may be written
    vals = np.array([[0.8, 0.6, 0.55], [0.9, 0.7, 0.5]])
    diverged = np.array([[False, False, True], [False, False, False]])
    ax = P.sweep_heatmap_figure([32, 16], lrs, vals, selected=(32, 1e-3), diverged=diverged).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.001", "0.01"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["16", "32"]
    texts = [t.get_text() for t in ax.texts]
    assert texts[:5] == ["0.700", "0.900", "0.500", "0.600", "0.800"] and texts[5] == "diverged"
    assert "0.550" not in texts  # a diverged value is never drawn as a (middling) result
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_xy() == (2, 1)  # lr 0.01, batch size 32
    rect = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(rect) == 1 and rect[0].get_xy() == (1, 1)  # the selected cell moved with its column
    colour_bar = ax.collections[0]
    assert colour_bar.norm.vmin == pytest.approx(0.5) and colour_bar.norm.vmax == pytest.approx(0.9)


def test_save_figure_writes_png_and_closes(tmp_path):
    fig = P.confusion_matrix_figure([0, 1], [0, 1])
    path = P.save_figure(fig, tmp_path / "a" / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert isinstance(P.roc_figure([0, 1], [0, 1]), Figure)


def test_training_curves_from_fit_history_rows():
    hist = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.6, "val_auc": 0.7}
        for e in (1, 2)
    ]
    fig = P.training_curves_figure(pd.DataFrame(hist), title="cnn", best_epoch=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("Loss" in t for t in titles) and any("AUC" in t for t in titles)
    assert all(ax.get_xlabel() == "Epoch" and ax.get_legend() is not None for ax in fig.axes)
    assert "threshold 0.5" in titles[1]  # the accuracy panel says where a PNEUMONIA call starts


def test_the_selected_model_comes_first_marked_and_leaves_the_others_in_sight():
    """roc_all.png and metrics_bar.png: compare's choice first in the legend, "(selected)"; its ROC a wide
    translucent band under the others, so cnn's line on the same points is drawn over it, not hidden."""
    from matplotlib.colors import to_hex

    same = (np.array([0, 0.02, 1]), np.array([0, 0.98, 1]), 0.99)
    ax = CF.roc_comparison_figure({"cnn": same, "vit": same, "cnn-tuned": same}, selected="cnn-tuned").axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "cnn-tuned (selected) (AUC = 0.990)"
    band, cnn = lines["cnn-tuned (selected) (AUC = 0.990)"], lines["cnn (AUC = 0.990)"]
    assert band.get_zorder() < cnn.get_zorder() and band.get_linewidth() > 2 * cnn.get_linewidth()
    assert band.get_alpha() < 1 and to_hex(band.get_color()) == P.model_color("cnn-tuned")

    table = {m: {"accuracy": (0.8, 0.7, 0.9)} for m in ("cnn", "vit", "cnn-tuned")}
    bars = CF.metrics_bar_figure(table, selected="cnn-tuned").axes[0]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["cnn-tuned (selected)", "cnn", "vit"]
    outlined = [p.get_edgecolor()[3] > 0 and to_hex(p.get_edgecolor()) == "#000000" for p in bars.patches]
    assert outlined == [True, False, False]  # only the selected bar is outlined
