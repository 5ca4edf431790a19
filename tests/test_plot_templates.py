"""The DVC plot templates (.dvc/plots/, from cxr.plot_templates) draw what they promise.

The project's own plots (git-tracked CSVs) go through the real ``dvc plots show --json``; each filled
spec is compiled and rendered to SVG by the project's Vega and Vega-Lite (node_modules, as on the
plots page; tests/js/vega_svg.mjs). A model is told apart by its colour, a revision by its dash; the
selected model comes first, marked.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml

from cxr import plot_templates
from cxr.candidates import tuned_name
from cxr.plots import model_color
from pipeline_repo import BIN, REPO_ROOT

VEGA_SVG = REPO_ROOT / "tests" / "js" / "vega_svg.mjs"


def models() -> list[str]:
    """Every candidate the charts draw: params.yaml's models and the sweep's kept one."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return [*params["models"], tuned_name(params["sweep"]["model"])]


def selected() -> str:
    """Compare's choice, as the committed report says."""
    import pandas as pd

    table = pd.read_csv(REPO_ROOT / "reports" / "results.csv")
    return str(table.loc[table["selected"], "model"].item())


def test_committed_templates_are_the_generated_ones():
    folder = REPO_ROOT / plot_templates.TEMPLATE_DIR
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(plot_templates.TEMPLATES)
    for name in plot_templates.TEMPLATES:
        committed = (folder / f"{name}.json").read_text(encoding="utf8")
        assert committed == plot_templates.render(name), f"run `python -m cxr.plot_templates`: {name} is stale"
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    used = {props["template"] for p in plots if isinstance(p, dict) for props in p.values()}
    assert used == set(plot_templates.TEMPLATES), "every template is used by dvc.yaml, every one used exists"


@pytest.fixture(scope="module")
def specs() -> dict[str, dict]:
    """dvc.yaml's Vega plots, filled by DVC with the committed data of the workspace."""
    out = subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out)["data"]
    return {name: entries[0]["content"] for name, entries in data.items() if entries[0]["type"] == "vega"}


def svg(specs: dict[str, dict]) -> dict[str, str]:
    node = shutil.which("node")
    assert node, "node is missing: the plot templates are checked with the project's Vega (make install)"
    assert (REPO_ROOT / "node_modules" / "vega-lite").is_dir(), "node_modules is missing: run `make install`"
    p = subprocess.run(
        [node, str(VEGA_SVG)], input=json.dumps(specs), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    errors = {k: v["error"] for k, v in out.items() if isinstance(v, dict)}
    assert not errors, f"Vega could not render: {errors}"
    return out


def texts(document: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", document)


def test_every_chart_colours_each_model_by_its_fixed_colour(specs):
    assert set(specs) == {
        "Loss",
        "Validation ROC-AUC",
        "Confusion matrices (test)",
        "ROC (test)",
        "Precision-recall (test)",
        "Calibration (test)",
    }
    rendered = svg(specs)
    chosen = selected()
    for name, document in rendered.items():
        labels = texts(document)
        entries = [m for m in labels if m.removesuffix(" (selected)") in models()]
        assert sorted(e.removesuffix(" (selected)") for e in entries) == sorted(models()), (name, labels)
        assert [e for e in entries if e.endswith(" (selected)")] == [f"{chosen} (selected)"], (name, entries)
        if name != "Confusion matrices (test)":
            for model in models():
                assert model_color(model) in document, f"{name}: {model}'s colour {model_color(model)} not drawn"
    # The chance and perfect-calibration diagonals; axis titles from dvc.yaml (never "y").
    assert "grey" in rendered["ROC (test)"] and "grey" in rendered["Calibration (test)"]
    assert "Binary cross-entropy (log scale)" in texts(rendered["Loss"])
    assert {"Training", "Validation"} <= set(texts(rendered["Loss"]))
    assert "y" not in texts(rendered["Loss"])


def test_confusion_cells_print_counts_and_row_shares(specs):
    """Every cell, zeros included, says its count and its share of the actual class's row: what the
    committed confusion CSVs (one row per test image) hold."""
    import pandas as pd

    labels = texts(svg({"c": specs["Confusion matrices (test)"]})["c"])
    cells = [re.fullmatch(r"(\d+) \((\d+)%\)", t) for t in labels]
    drawn = sorted((int(m.group(1)), int(m.group(2))) for m in cells if m)
    expected = []
    long = pd.read_csv(REPO_ROOT / "plots" / "models" / "confusion.csv")
    assert sorted(set(long["model"])) == sorted(models())
    for _, rows in long.groupby("model"):
        table = pd.crosstab(rows["actual"], rows["predicted"]).reindex(
            index=["NORMAL", "PNEUMONIA"], columns=["NORMAL", "PNEUMONIA"], fill_value=0
        )
        for _, row in table.iterrows():
            expected += [(int(n), 100 * n / row.sum()) for n in row]
    expected.sort()
    assert [n for n, _ in drawn] == [n for n, _ in expected]
    assert all(abs(d - e) <= 0.5 for (_, d), (_, e) in zip(drawn, expected)), (drawn, expected)


def test_two_revisions_are_told_apart_by_dash_not_colour(specs):
    spec = copy.deepcopy(specs["ROC (test)"])
    rows = spec["data"]["values"]
    spec["data"]["values"] = rows + [{**r, "rev": "HEAD"} for r in rows]
    document = svg({"roc": spec})["roc"]
    assert {"HEAD", "workspace"} <= set(texts(document))
    assert "stroke-dasharray" in document
    for model in models():
        assert model_color(model) in document


def test_the_selected_model_is_a_band_under_the_other_lines(specs):
    """Its curve is wide and translucent and drawn first: a model with the same points stays in sight."""
    document = svg({"roc": specs["ROC (test)"]})["roc"]
    paths = re.findall(r'<path[^>]*aria-roledescription="line mark"[^>]*>', document)
    lines = [p for p in paths if "Model: " in p]  # not the chance diagonal
    assert f"Model: {selected()} (selected)" in lines[0] and model_color(selected()) in lines[0]
    widths = [float(re.search(r'stroke-width="([\d.]+)"', p).group(1)) for p in lines]
    assert widths[0] > 2 * max(widths[1:]) and 'opacity="0.5"' in lines[0], lines[:2]
    for model in models():  # every line in its model's colour (a range from a data field is easily misordered)
        (line,) = [p for p in lines if re.search(rf"Model: {re.escape(model)}( \(selected\))?;", p)]
        assert f'stroke="{model_color(model)}"' in line, (model, line)


def test_line_legends_draw_the_dash_of_each_revision(specs):
    """With two revisions, each line chart's legend draws strokes, not the points' circles: one per model
    in its colour, one per revision with its own dash."""
    two = {}
    for name, spec in specs.items():
        if name == "Confusion matrices (test)":
            continue
        spec = copy.deepcopy(spec)
        rows = spec["data"]["values"]
        spec["data"]["values"] = rows + [{**r, "rev": "HEAD"} for r in rows]
        two[name] = spec
    for name, document in svg(two).items():
        symbols = re.findall(r'role-legend-symbol"[^>]*>(<path[^>]*>)', document)
        assert len(symbols) == len(models()) + 2, (name, len(symbols))
        shapes = {re.search(r' d="([^"]*)"', s).group(1) for s in symbols}
        assert len(shapes) == 1 and re.fullmatch(r"M-[\d.]+,0L[\d.]+,0", shapes.pop()), f"{name}: not strokes"
        strokes = [re.search(r' stroke="(#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?)"', s) for s in symbols]
        assert all(strokes), f"{name}: a legend entry drawn without a stroke colour (invisible)"
        dashes = {m.group(1) for s in symbols if (m := re.search(r'stroke-dasharray="([^"]*)"', s))}
        assert len(dashes) == 2, f"{name}: the two revisions' legend entries look alike: {dashes}"
