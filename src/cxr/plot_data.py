"""The DVC plots' data in long form: one CSV per chart, a row per point of every candidate (the models of
params.yaml's list and the sweep's ``<model>-tuned``), each row with its ``model``, whether compare selects it
(``selected``) and its ``color`` (:func:`cxr.plots.model_color`, as in every PNG).

    table = long_form({"cnn": roc_cnn, "resnet_small-tuned": roc_tuned}, selected="resnet_small-tuned")

dvc.yaml's top-level plots name these files only, so they name no model: a model added to params.yaml is
in every chart, in its own colour, without a line of dvc.yaml or of the templates (cxr.plot_templates).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxr.compare_figures import selected_first
from cxr.plots import model_color

# The long-form files (stage plots, plots/models/<name>.csv): the per-epoch history (train's, or the sweep's for
# <model>-tuned) and the tables of each evaluate stage.
PLOTS = ("history", "confusion", "roc", "pr", "calibration")


def source(name: str, history: str | Path, evaluated: str | Path, model: str) -> Path:
    """Where ``model``'s own rows of plot ``name`` are."""
    return Path(history) / f"{model}.csv" if name == "history" else Path(evaluated) / model / f"{name}.csv"


KEYS = ["model", "selected", "color"]  # the columns every long-form file starts with


def long_form(tables: Mapping[str, pd.DataFrame], selected: str | None) -> pd.DataFrame:
    """The candidates' tables one under the other, ``selected`` first (so first in each chart's legend)."""
    frames = [
        tables[m].assign(model=m, selected=m == selected, color=model_color(m))
        for m in selected_first(list(tables), selected)
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[KEYS + [c for c in table.columns if c not in KEYS]]


def read_long_form(history: str | Path, evaluated: str | Path, candidates: list[str], selected: str | None):
    """plot name -> its long-form table, from the candidates' own files (a candidate without one is left out)."""
    out = {}
    for name in PLOTS:
        files = {m: source(name, history, evaluated, m) for m in candidates}
        tables = {m: pd.read_csv(f) for m, f in files.items() if f.is_file()}
        if tables:
            out[name] = long_form(tables, selected)
    return out
