"""cxr.stage's progress bars: drawn on a terminal, silent in a log (no ``\\r`` frames in `dvc repro > log`)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
import yaml

from cxr.stage import progress_bar, progress_enabled
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
