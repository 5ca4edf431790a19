"""Every benchmark script starts: its imports still resolve against the code it measures; `make bench`
runs the speed and memory benchmarks of its one list and never a research script.

The benchmarks are not run by the suite (minutes each, timing on a shared machine); a refactor that
renames what they import must still fail here, not on the next person to measure.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys

import pytest

from pipeline_repo import REPO_ROOT

BENCH_DIR = REPO_ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))
# Scripts that train models for accuracy (benchmarks/README.md, "Research scripts"): never in `make bench`.
KNOWN_RESEARCH = {"external_recipe", "kernel_agreement", "set_a_clinical"}
# What a script imports to train a model to the end or to score accuracy; a speed or memory benchmark
# times single epochs or steps (cxr.training.engine, loaders) and imports none of these.
ACCURACY_MODULES = ("cxr.training.fit", "cxr.training.run_config", "cxr.metrics", "cxr.evaluation", "sklearn.metrics")


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH_DIR / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _accuracy_imports(name: str) -> set[str]:
    tree = ast.parse((BENCH_DIR / f"{name}.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {m for m in modules if any(m == a or m.startswith(a + ".") for a in ACCURACY_MODULES)}


def test_there_are_benchmarks():
    assert {p.name for p in SCRIPTS} >= {"external_recipe.py", "run_all.py", "kernel_agreement.py"}


def test_make_bench_lists_existing_speed_and_memory_benchmarks_only():
    run_all = _run_all()
    bench, research = set(run_all.BENCHMARKS), set(run_all.RESEARCH)
    scripts = {p.stem for p in SCRIPTS} - {"run_all"}
    assert len(bench) == len(run_all.BENCHMARKS) and bench <= scripts, f"not in benchmarks/: {bench - scripts}"
    assert not bench & research, f"in both lists: {bench & research}"
    assert bench | research == scripts, f"in neither list of run_all.py: {scripts - bench - research}"
    assert KNOWN_RESEARCH <= research, f"research scripts not in RESEARCH: {KNOWN_RESEARCH - research}"
    for name in KNOWN_RESEARCH:  # the marker below recognises the known research scripts...
        assert _accuracy_imports(name), f"{name}.py no longer imports any of {ACCURACY_MODULES}: update the marker"
    for name in bench:  # ...and no benchmark of make bench carries it
        assert not _accuracy_imports(name), f"make bench runs {name}.py, which trains for accuracy: move it to RESEARCH"


def test_make_bench_runs_run_all():
    p = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "bench"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert [line.split()[1:] for line in p.stdout.splitlines()] == [["benchmarks/run_all.py"]], p.stdout


def test_run_all_runs_its_list_and_nothing_else(tmp_path, monkeypatch, capsys):
    """Only the listed scripts run, in order, with --data; a failure is reported and the others still run."""
    log = tmp_path / "log"
    for name, code in {"first": 0, "broken": 3, "last": 0, "unlisted": 0}.items():
        (tmp_path / f"{name}.py").write_text(
            f"import sys\nopen({str(log)!r}, 'a').write({name!r} + ' ' + ' '.join(sys.argv[1:]) + '\\n')\n"
            f"sys.exit({code})\n"
        )
    run_all = _run_all()
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", ("first", "broken", "last"))
    assert run_all.main(["--data", "imgs"]) == 1
    assert log.read_text().splitlines() == ["first --data imgs", "broken --data imgs", "last --data imgs"]
    out = capsys.readouterr().out
    assert "-- broken: FAILED (exit 3)" in out and "failed: broken" in out and "2 of 3 benchmarks ok" in out

    log.unlink()
    monkeypatch.setattr(run_all, "BENCHMARKS", ("first", "gone"))
    assert run_all.main([]) == 2 and not log.exists()  # a missing script stops it before anything runs
    assert "gone.py not in" in capsys.readouterr().err


def test_readme_sorts_the_scripts_as_run_all_does():
    run_all = _run_all()
    bench_part, research_part = (BENCH_DIR / "README.md").read_text().split("\n## Research scripts: run by name\n")
    for name in run_all.BENCHMARKS:
        assert f"| `{name}.py` |" in bench_part and f"`{name}.py`" not in research_part, name
    for name in run_all.RESEARCH:
        assert f"| `{name}.py` |" in research_part or f"\n`{name}.py` (" in research_part, name
        assert f"`{name}.py`" not in bench_part.split("## Speed and memory")[1], name


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
    # --rule edge: the former points, at the edge of the validation range; the policy's keeps a margin for the sample
    edge = subprocess.run([*cmd, "--rule", "edge"], capture_output=True, text=True, env=env, timeout=120)
    assert edge.returncode == 0 and "(edge)" in edge.stdout and "confidence none" in edge.stdout, edge.stderr[-2000:]
    edge1 = dict(zip(header, map(float, edge.stdout.splitlines()[2].split()[2:])))
    assert edge1["sens95_sens"] < seed1["sens95_sens"], (edge.stdout, p.stdout)
    missing = subprocess.run([*cmd[:-2], "--work", str(tmp_path / "none")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "run external_recipe.py cpu --seeds 1 first" in missing.stderr
