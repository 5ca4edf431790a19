"""The Vega-Lite templates of the pipeline's DVC plots (``.dvc/plots/*.json``), generated from this module.

DVC's built-in templates colour by revision and tell files apart by dash pattern only, label a multi-file
y axis "y", draw no chance diagonal and give each confusion matrix its own 600-px chart. These colour
each line by its **model** (the ``color`` column of the data: :func:`cxr.plots.model_color`, as in every
PNG) and dash it by **revision** (``dvc plots diff``), so one chart reads the same with one revision or two:

- ``model_lines``: a per-epoch value of each model (``x: epoch``);
- ``model_loss``: training and validation loss side by side (two y fields), log scale: a first epoch of
  loss 3 does not flatten the others;
- ``model_roc`` / ``model_calibration``: the curves plus the chance / perfect-calibration diagonal;
- ``model_pr``: precision-recall curves;
- ``model_confusion``: every model's confusion matrix in one row (a row per revision), counts and row
  shares printed in the cells.

The data is long form (stage plots, cxr.plot_data): every row says its ``model``, whether compare
``selected`` it and its ``color``, so the templates name no model. The selected model comes first in each
legend, "(selected)" after its name, drawn as a wide translucent band under the others' lines (which stay
in sight where they coincide with it). ``python -m cxr.plot_templates`` rewrites the files;
tests/test_plot_templates.py fails when the committed ones differ from what this module generates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(".dvc/plots")
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
X, Y = "<DVC_METRIC_X>", "<DVC_METRIC_Y>"
X_LABEL, Y_LABEL, TITLE, DATA = (
    "<DVC_METRIC_X_LABEL>",
    "<DVC_METRIC_Y_LABEL>",
    "<DVC_METRIC_TITLE>",
    "<DVC_METRIC_DATA>",
)
SIDE = 320  # px: square ROC and calibration charts

# The model's legend entry: its name, marked when compare selects it (the CSV says True; JSON data: true).
SELECTED = "datum.selected === 'True' || datum.selected === true"
LABEL = f"({SELECTED}) ? datum.model + ' (selected)' : datum.model"
# With two y fields (train_loss, val_loss), DVC says in `field` which one a value is.
FIELD = "datum.field || ''"


def model_color() -> dict[str, Any]:
    """The colour channel: each model's ``color`` from its rows. Vega-Lite orders a range taken from a field
    by the channel's field (here: the legend label, ascending), so the domain keeps that default order too:
    any other sort would hand the colours to the wrong models."""
    return {"field": "label", "type": "nominal", "title": "Model", "scale": {"range": {"field": "color"}}}


# Line charts' legends draw a short stroke, dashed as the revision is: a point-and-line mark would
# otherwise give every legend entry a circle, which says nothing of the dash.
LINE_LEGEND = {"symbolType": "stroke", "symbolStrokeWidth": 2, "symbolSize": 250}
# The revision legend has no colour channel: its strokes are drawn in grey. A point-and-line mark fills
# legend symbols and leaves them no stroke (symbolStrokeColor is ignored), hence the encode block.
REVISION_DASH = {
    "field": "rev",
    "type": "nominal",
    "title": "Revision",
    "legend": {**LINE_LEGEND, "encode": {"symbols": {"update": {"stroke": {"value": "#555555"}}}}},
}
TOOLTIP = [
    {"field": "label", "type": "nominal", "title": "Model"},
    {"field": "rev", "type": "nominal", "title": "Revision"},
    {"field": X, "type": "quantitative", "title": X_LABEL, "format": ".3f"},
    {"field": Y, "type": "quantitative", "title": Y_LABEL, "format": ".3f"},
]


def _base(extra: list[dict] | None = None) -> dict[str, Any]:
    return {
        "$schema": SCHEMA,
        "data": {"values": DATA},
        "title": {"text": TITLE, "anchor": "middle"},
        "transform": [{"calculate": LABEL, "as": "label"}, *(extra or [])],
    }


def _unit_axes(ticks: int = 5) -> dict[str, dict]:
    axis = {"format": ".1f", "tickCount": ticks, "labelOverlap": True}
    scale = {"domain": [0, 1], "nice": False}
    return {
        "x": {"field": X, "type": "quantitative", "title": X_LABEL, "scale": scale, "axis": axis},
        "y": {"field": Y, "type": "quantitative", "title": Y_LABEL, "scale": scale, "axis": axis},
    }


def _curves(point: bool = False) -> dict[str, Any]:
    return {
        "mark": {"type": "line", "point": point},
        "encoding": {
            "color": {**model_color(), "legend": {**LINE_LEGEND, "labelLimit": 260}},
            "strokeDash": REVISION_DASH,
            # the selected model: a wide translucent band, drawn first (its rows come first), under the others
            "strokeWidth": {
                "field": "selected",
                "type": "ordinal",
                "scale": {"domain": ["False", "True"], "range": [2, 6]},
                "legend": None,
            },
            "opacity": {"condition": {"test": SELECTED, "value": 0.5}, "value": 1},
            "tooltip": TOOLTIP,
        },
    }


def _diagonal(label: str) -> dict[str, Any]:
    return {
        "data": {"values": [{"d": 0, "label": label}, {"d": 1, "label": label}]},
        "mark": {"type": "line", "color": "grey", "strokeDash": [4, 4], "strokeWidth": 1},
        "encoding": {
            "x": {"field": "d", "type": "quantitative"},
            "y": {"field": "d", "type": "quantitative"},
            "tooltip": {"field": "label", "type": "nominal"},
        },
    }


def model_lines() -> dict[str, Any]:
    epoch = {"field": X, "type": "quantitative", "title": X_LABEL, "axis": {"tickMinStep": 1, "format": "d"}}
    y = {"field": Y, "type": "quantitative", "title": Y_LABEL, "scale": {"zero": False}}
    spec = _base()
    spec.update({"width": 420, "height": 260, **_curves(point=True)})
    spec["encoding"].update(x=epoch, y=y)
    return spec


def model_loss() -> dict[str, Any]:
    """Two y fields (train_loss, val_loss): DVC puts the value in ``dvc_inferred_y_value`` and the field in
    ``field``; one panel per field side by side (hconcat: a facet cannot take the colours from a data field),
    a shared log-scale y."""
    spec = _base()

    def panel(field: str, title: str) -> dict[str, Any]:
        curves = _curves(point=True)
        curves["encoding"].update(
            x={"field": X, "type": "quantitative", "title": X_LABEL, "axis": {"tickMinStep": 1, "format": "d"}},
            y={"field": Y, "type": "quantitative", "title": Y_LABEL, "scale": {"type": "log"}},
        )
        only = {"filter": f"({FIELD}) == '{field}'"}
        return {"title": {"text": title, "fontSize": 13}, "width": 300, "height": 240, "transform": [only], **curves}

    spec.update(
        {
            "hconcat": [panel("train_loss", "Training"), panel("val_loss", "Validation")],
            "resolve": {"scale": {"y": "shared"}},
        }
    )
    return spec


def _diagonal_chart(label: str, point: bool) -> dict[str, Any]:
    """A square unit-axes chart: the grey diagonal (``label``) under one curve per model and revision."""
    spec = _base()
    spec.update({"width": SIDE, "height": SIDE, "encoding": _unit_axes(), "layer": [_diagonal(label), _curves(point)]})
    return spec


def model_roc() -> dict[str, Any]:
    return _diagonal_chart("Chance (AUC = 0.5)", point=False)


def model_pr() -> dict[str, Any]:
    curves = _curves()
    curves["mark"]["interpolate"] = "step-after"
    curves["encoding"].update(_unit_axes())
    spec = _base()
    spec.update({"width": SIDE, "height": SIDE, **curves})
    return spec


def model_calibration() -> dict[str, Any]:
    return _diagonal_chart("Perfectly calibrated", point=True)


def model_confusion() -> dict[str, Any]:
    """Counts per (model, revision, actual, predicted); absent cells are 0; share of the actual row."""
    transform: list[dict[str, Any]] = [
        {"aggregate": [{"op": "count", "as": "n"}], "groupby": ["label", "rev", Y, X]},
        {"impute": "n", "key": X, "groupby": ["label", "rev", Y], "value": 0},
        {"joinaggregate": [{"op": "sum", "field": "n", "as": "row_n"}], "groupby": ["label", "rev", Y]},
        {"calculate": "datum.row_n > 0 ? datum.n / datum.row_n : 0", "as": "share"},
        {"calculate": "datum.n + ' (' + format(datum.share, '.0%') + ')'", "as": "cell"},
    ]
    spec = _base(transform)
    nominal = {"type": "nominal", "axis": {"labelAngle": 0}}
    spec.update(
        {
            "facet": {
                "column": {"field": "label", "type": "nominal", "title": None, "sort": None},
                "row": {"field": "rev", "type": "nominal", "title": None},
            },
            "spec": {
                "width": 130,
                "height": 130,
                "encoding": {
                    "x": {"field": X, "title": X_LABEL, **nominal},
                    "y": {"field": Y, "title": Y_LABEL, **nominal},
                },
                "layer": [
                    {
                        "mark": "rect",
                        "encoding": {
                            "color": {
                                "field": "share",
                                "type": "quantitative",
                                "title": "Share of the actual class",
                                "scale": {"domain": [0, 1], "scheme": "blues"},
                                "legend": {"format": ".0%"},
                            },
                            "tooltip": [
                                {"field": "label", "title": "Model"},
                                {"field": "rev", "title": "Revision"},
                                {"field": Y, "title": "Actual"},
                                {"field": X, "title": "Predicted"},
                                {"field": "n", "title": "Images"},
                                {"field": "share", "title": "Share of row", "format": ".1%"},
                            ],
                        },
                    },
                    {
                        "mark": {"type": "text", "fontSize": 13},
                        "encoding": {
                            "text": {"field": "cell"},
                            "color": {"condition": {"test": "datum.share > 0.5", "value": "white"}, "value": "black"},
                        },
                    },
                ],
            },
        }
    )
    return spec


TEMPLATES = {
    "model_lines": model_lines,
    "model_loss": model_loss,
    "model_roc": model_roc,
    "model_pr": model_pr,
    "model_calibration": model_calibration,
    "model_confusion": model_confusion,
}


def render(name: str) -> str:
    """Template ``name`` as the bytes written to ``.dvc/plots/<name>.json``."""
    return json.dumps(TEMPLATES[name](), indent=2) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the pipeline's DVC plot templates to .dvc/plots/.")
    p.add_argument("--out", default=str(TEMPLATE_DIR), help="folder (default: .dvc/plots)")
    out = Path(p.parse_args(argv).out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        (out / f"{name}.json").write_text(render(name), encoding="utf8")
    print(f"wrote {len(TEMPLATES)} templates to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
