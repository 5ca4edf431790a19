"""Damaged or hostile model files (models/<name>/model.pt + model.json): one line each, naming the file and the fix.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_model_files.py -q

Each case damages a copy of a tiny checkpoint (tests/toydata.make_checkpoint), then loads it the ways
a user does: `cxr predict --model` (exit 2, one line on stderr) and cxr.checkpoint.load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hostile_kit import put, xray_jpeg

from cxr import checkpoint
from cxr.serving import cli
from toydata import make_checkpoint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn")


class _RunsCode:
    """Pickled as a call of ``open(marker, "w")``: loading it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _card(path: Path, **changes) -> None:
    card = json.loads(path.read_text())
    path.write_text(json.dumps({**card, **changes}))


def _edit_arch(path: Path, **changes) -> None:
    card = json.loads(path.read_text())
    _card(path, arch={**card["arch"], **changes})


DEFECTS = {
    # name: (how the copy is damaged, what the line must say)
    "empty_weights": (lambda d: (d / "model.pt").write_bytes(b""), "model.pt is empty (0 bytes)"),
    "weights_not_a_zip": (lambda d: (d / "model.pt").write_bytes(b"not torch"), "not a readable state_dict"),
    "weights_missing": (lambda d: (d / "model.pt").unlink(), "model.pt is missing"),
    "weights_of_another_model": (
        lambda d: torch.save({"w": torch.zeros(2)}, d / "model.pt"),
        "do not fit the architecture",
    ),
    "card_a_list": (lambda d: (d / "model.json").write_text("[1, 2]"), "holds a JSON array, expected an object"),
    "card_not_json": (lambda d: (d / "model.json").write_text("{'a': 1"), "is not valid JSON"),
    "image_size_text": (lambda d: _card(d / "model.json", image_size="abc"), "image_size is 'abc'"),
    "arch_image_size_text": (lambda d: _edit_arch(d / "model.json", image_size="abc"), "arch.image_size is 'abc'"),
    "threshold_nan": (lambda d: _card(d / "model.json", threshold=float("nan")), "threshold is nan"),
    "cache_size_negative": (lambda d: _card(d / "model.json", cache_size=-5), "cache_size is -5"),
    "temperature_text": (lambda d: _card(d / "model.json", temperature="hot"), "temperature is 'hot'"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_damaged_model_file_is_one_line_naming_the_file_and_the_fix(tmp_path, pristine, capsys, defect):
    damage, expected = DEFECTS[defect]
    model_dir = Path(shutil.copytree(pristine, tmp_path / "cnn"))
    damage(model_dir)
    image = put(tmp_path / "IM-0001-0001.jpeg", xray_jpeg(1))
    rc = cli.main(["predict", str(image), "--model", str(model_dir), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert rc == cli.EXIT_USAGE and len(err) == 1, err
    assert expected in err[0] and str(model_dir) in err[0] and "dvc repro train" in err[0]
    with pytest.raises(checkpoint.CheckpointError):  # the stages (evaluate, compare) get the same error
        checkpoint.load(model_dir)


def test_a_pickle_that_would_run_code_is_refused_and_never_advises_weights_only_false(tmp_path, pristine, capsys):
    model_dir = Path(shutil.copytree(pristine, tmp_path / "cnn"))
    marker = tmp_path / "ran"
    torch.save({"w": _RunsCode(marker)}, model_dir / "model.pt")
    image = put(tmp_path / "IM-0001-0001.jpeg", xray_jpeg(1))
    rc = cli.main(["predict", str(image), "--model", str(model_dir), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert rc == cli.EXIT_USAGE and len(err) == 1 and not marker.exists()
    assert "weights_only" not in err[0] and "nothing in it was run" in err[0] and "model.pt" in err[0]
