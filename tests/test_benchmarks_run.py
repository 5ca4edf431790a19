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
