"""`cxr predict --help`: the registry URI whole, every format the parser accepts, one stated default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxr.serving import cli
from cxr.serving.imageio import DICOM_EXTENSIONS, RASTER_EXTENSIONS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=[60, 80, 120])
def help_text(request) -> str:
    env = {"PYTHONPATH": str(REPO / "src"), "COLUMNS": str(request.param), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "cxr", "predict", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _predict_action(dest: str):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return next(a for a in sub.choices["predict"]._actions if a.dest == dest)


def test_help_keeps_the_registry_uri_whole(help_text):
    assert "models:/cxr-pneumonia@champion" in help_text
    assert "cxr-\n" not in help_text  # never cut at its hyphen


def test_help_lists_every_format_the_parser_accepts(help_text):
    formats = _predict_action("format").choices
    assert set(formats) == {"table", "csv", "jsonl"}
    for name in formats:  # each in the epilog's table, with what it is
        assert any(line.split()[:1] == [name] and len(line.split()) > 2 for line in help_text.splitlines()), name
    for ext in (*RASTER_EXTENSIONS, *DICOM_EXTENSIONS):  # and every input type the reader takes
        assert ext in help_text.split(), ext


def test_help_states_the_default_model_the_code_loads(help_text):
    flat = " ".join(help_text.split())
    assert "default model (no --model): the model the compare stage selected on validation" in flat
    assert "reports/results.csv" in flat and "default: the champion" not in flat
    assert _predict_action("results").default == "reports/results.csv"  # what cmd_predict reads without --model
    docs = " ".join((REPO / "docs" / "using-a-model.md").read_text().split())
    assert "default model: the champion" not in docs and "selected` true in `reports/results.csv`" in docs
