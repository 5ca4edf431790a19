"""cxr.stage's progress bars: drawn on a terminal, silent in a log (no ``\\r`` frames in `dvc repro > log`)."""

from __future__ import annotations

import ast
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import yaml

from cxr.stage import progress_bar, progress_enabled, starting_line
from cxr.training.engine import train_one_epoch

REPO = Path(__file__).resolve().parents[1]


def _split_cmd(raw: Path, tmp_path: Path) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"split": {"workers": 1}}))
    out = [f"--{k}={tmp_path / v}" for k, v in (("manifest", "m.csv"), ("quarantine", "q.csv"), ("metrics", "d.json"))]
    return [sys.executable, str(REPO / "src" / "split.py"), f"--params={params}", f"--raw={raw}", *out]


def _run_on_a_terminal(cmd: list[str]) -> tuple[int, bytes]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; everything it wrote, and its exit code."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks)


def test_progress_only_on_a_terminal():
    assert not progress_enabled(stream=io.StringIO())
    assert not progress_enabled(stream=object())  # no isatty at all
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert progress_enabled(stream=terminal) and not progress_enabled(False, stream=terminal)
    os.close(leader)


def test_split_stage_log_has_no_bar_frames_and_a_terminal_has_its_bar(synthetic_raw, tmp_path):
    cmd = _split_cmd(synthetic_raw, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    logged = subprocess.run(cmd, capture_output=True, env=env, timeout=300)  # `dvc repro > log 2>&1`
    assert logged.returncode == 0, logged.stderr
    assert b"\r" not in logged.stderr + logged.stdout
    assert b"verified" in logged.stdout  # the stage's own line is still there
    rc, shown = _run_on_a_terminal(cmd)
    assert rc == 0
    assert b"verify: 100%|" in shown and b"\rverify:" in shown  # the bar, redrawn in place


def test_training_epoch_writes_no_bar_into_a_log(capfd):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,)).float()
    loader = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(
        model,
        torch.nn.BCEWithLogitsLoss(),
        opt,
        loader,
        torch.device("cpu"),
        augment=lambda t: t,
        prep=lambda t: t,
        progress=True,  # asked for, but stderr is pytest's capture: not a terminal
    )
    assert out["loss"] > 0
    captured = capfd.readouterr()
    assert "\r" not in captured.err + captured.out and "train" not in captured.err


@pytest.mark.parametrize("enabled", [True, False])
def test_a_disabled_bar_still_iterates_and_counts(enabled, capfd):
    assert list(progress_bar(range(3), enabled=enabled, desc="x")) == [0, 1, 2]
    bar = progress_bar(total=2, enabled=enabled)
    bar.update(2)
    bar.close()
    assert "\r" not in capfd.readouterr().err  # never a terminal under pytest: silent either way


def test_a_stage_stopped_by_sigterm_says_so_without_a_traceback(capsys):
    """`dvc queue kill` sends SIGTERM: one line on stderr and exit code 143, not a traceback."""
    from cxr.signals import StageInterrupted
    from cxr.stage import run_stage

    def main() -> int:
        raise StageInterrupted("SIGTERM")

    with pytest.raises(SystemExit) as ended:
        run_stage("train", main, (ValueError,))
    assert ended.value.code == 143
    err = capsys.readouterr().err
    assert err.startswith("train: stopped by SIGTERM") and "dvc repro" in err and "Traceback" not in err


def _stage_scripts() -> list[Path]:
    """The stage scripts: src/*.py whose docstring starts ``Stage <name>:``."""
    docs = {p: ast.get_docstring(ast.parse(p.read_text())) or "" for p in sorted((REPO / "src").glob("*.py"))}
    return [p for p, doc in docs.items() if doc.startswith("Stage ")]


def test_every_stage_imports_cxr_stage_before_anything_else():
    scripts = _stage_scripts()
    assert {"train", "evaluate", "compare", "check_params"} <= {p.stem for p in scripts}
    for script in scripts:
        imports = [n for n in ast.parse(script.read_text()).body if isinstance(n, ast.Import | ast.ImportFrom)]
        first = next(n for n in imports if not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))
        assert isinstance(first, ast.ImportFrom) and first.module == "cxr.stage", (
            f"{script.name}: import cxr.stage first (its own block, then `# isort: split`), so that the stage "
            "says what it does before torch and MLflow load"
        )


def test_a_stage_says_what_it_does_before_torch_loads():
    """The stage's line comes before the first module of torch is imported (-X importtime writes a line per
    import, in the same pipe): the order, not the time, is checked; the run is stopped there."""
    cmd = [sys.executable, "-X", "importtime", str(REPO / "src" / "train.py"), "--help"]
    env = {**os.environ, "DVC_STAGE": "train@cnn", "PYTHONPATH": str(REPO / "src")}
    env.pop("RANK", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if re.search(r"\| +torch(\.|$)", line.rstrip()):
                break
            seen.append(line)
    finally:
        proc.kill()
        proc.wait()
    assert "train@cnn: train one model on the cached train split, select on validation, log to MLflow.\n" in seen


def test_only_a_stage_script_and_rank_zero_announce():
    doc = "Stage `params`: every key known.\n\nMore."
    assert starting_line(doc, str(REPO / "src" / "check_params.py"), {}) == "params: every key known."
    assert (
        starting_line(doc, str(REPO / "src" / "check_params.py"), {"DVC_STAGE": "params"}) == "params: every key known."
    )
    assert starting_line(doc, str(REPO / "src" / "check_params.py"), {"RANK": "1"}) is None  # torchrun's other ranks
    assert starting_line(doc, "/usr/bin/pytest", {}) is None  # not a script of src/
    assert starting_line("cxr predict: ...", str(REPO / "src" / "real.py"), {}) is None  # not a stage
