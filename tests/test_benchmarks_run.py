"""Every benchmark script starts: its imports still resolve against the code it measures.

The benchmarks are not run by the suite (minutes each, timing on a shared machine); a refactor that
renames what they import must still fail here, not on the next person to measure.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline_repo import REPO_ROOT

SCRIPTS = sorted(p for p in (REPO_ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_there_are_benchmarks():
    assert {p.name for p in SCRIPTS} >= {"external_recipe.py", "run_all.py", "kernel_agreement.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_starts(script):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout


def test_set_a_clinical_scores_the_choices_made_on_validation(tmp_path):
    """Two saved runs whose set A shifts the NORMALs up: the sensitivity point set on validation holds
    there, the specificity point does not, and the table ends with the mean +- sd."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    for seed in (1, 2):
        val = np.r_[rng.uniform(0.02, 0.45, 100), rng.uniform(0.55, 0.98, 100)]
        shifted = np.r_[rng.uniform(0.25, 0.75, 100), rng.uniform(0.55, 0.98, 100)]
        np.savez(tmp_path / f"cpu@seed{seed}.npz", val_probs=val, val_labels=y, a_probs=shifted, a_labels=y)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    script = REPO_ROOT / "benchmarks" / "set_a_clinical.py"
    cmd = [sys.executable, str(script), "cpu", "--seeds", "1", "2", "--work", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    header, *rows = [line.split() for line in p.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["seed", "seed", "mean+-sd"], p.stdout
    seed1 = dict(zip(header, map(float, rows[0][2:])))
    assert seed1["sens95_sens"] >= 0.95 and seed1["spec95_spec"] < 0.8, p.stdout
    assert 0.9 <= seed1["val_coverage"] <= 1 and seed1["error"] > 0.05, p.stdout
    assert all("+-" in cell for cell in rows[-1][1:]) and len(rows[-1]) == len(header) + 1
    missing = subprocess.run([*cmd[:-2], "--work", str(tmp_path / "none")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "run external_recipe.py cpu --seeds 1 first" in missing.stderr
