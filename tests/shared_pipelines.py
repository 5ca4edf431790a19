"""The tiny whole-pipeline repos that end-to-end tests share, built once per pytest session.

Under ``pytest -n`` (make test) the controller starts one builder process as soon as a worker has collected a
test that reads them: it builds the baseline, then (when a test that reads it was collected) the experiment,
while both workers run the other tests; a test that needs one waits for it. So no worker spends the build's
minutes alone while the other has nothing to do, and the tests that read the repos run on either worker.
Without xdist (``-p no:xdist``, or one test by name) the first test that needs a repo builds it in its own
process, as before.

    python tests/shared_pipelines.py <root> baseline [experiment]     # what the builder runs

In ``<root>``: ``<name>.json`` (the fixture's value) once a repo is built, ``<name>.error`` (its traceback) if
building it failed, ``builder.log``; ``started`` while a builder owns the root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pipeline_repo import build_baseline, copy_repo, experiment_runs, run

# The test modules whose tests read the shared repos, and those of them that read the experiment too.
BASELINE_MODULES = (
    "tests/test_workflows.py",
    "tests/test_plots_offline.py",
    "tests/test_weights_stage.py",
    "tests/hostile/test_hostile_killed_compare.py",
)
EXPERIMENT_MODULES = ("tests/test_workflows.py", "tests/test_plots_offline.py")
EXPERIMENT_ARGS = ["-n", "lr-bs", "-S", "lr=1e-4", "-S", "batch_size=16"]
WAIT_S = 3600


def build_experiment(baseline: dict, dest: Path) -> dict:
    """A copy of the baseline after ``dvc exp run`` with EXPERIMENT_ARGS: the experiment's results in the
    workspace, HEAD the baseline's. The baseline's keys, plus "exp_out" (that run's stdout) and "n_before"
    (the MLflow runs before it)."""
    repo = copy_repo(Path(baseline["repo"]), dest)
    n_before = len(experiment_runs(repo))
    out = run(["dvc", "exp", "run", *EXPERIMENT_ARGS], repo, timeout=1800)
    return {**baseline, "repo": repo, "exp_out": out.stdout, "n_before": n_before}


def build(root: Path, name: str) -> dict:
    """Build ``name`` (baseline | experiment) under ``root`` and return the fixture's value (JSON-ready)."""
    if name == "baseline":
        value = build_baseline(root / "baseline" / "repo")
    else:
        value = build_experiment(json.loads((root / "baseline.json").read_text()), root / "experiment" / "repo")
    return {**value, "repo": str(value["repo"])}


def publish(root: Path, name: str) -> None:
    """Build ``name`` and write ``<name>.json`` atomically, or ``<name>.error`` with the traceback."""
    try:
        value = build(root, name)
    except BaseException:
        (root / f"{name}.error").write_text(traceback.format_exc())
        raise
    tmp = root / f"{name}.json.tmp"
    tmp.write_text(json.dumps(value))
    tmp.replace(root / f"{name}.json")


def start_builder(root: Path, names: list[str]) -> subprocess.Popen:
    """The builder process (its own process group, so that ``pipeline_repo.stop_group`` ends its dvc and stages too)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "started").write_text(" ".join(names))
    log = (root / "builder.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(root), *names],
        cwd=Path(__file__).parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def shared_repo(root: Path, name: str, build_here) -> dict:
    """The fixture's value: the builder's result when a builder owns ``root`` (waiting for it), else
    ``build_here()``'s."""
    if not (root / "started").is_file() or name not in (root / "started").read_text().split():
        return build_here()
    deadline = time.monotonic() + WAIT_S
    while not (root / f"{name}.json").is_file():
        if (root / f"{name}.error").is_file():
            raise AssertionError(f"building the shared {name} repo failed:\n{(root / f'{name}.error').read_text()}")
        if time.monotonic() > deadline:
            log = (root / "builder.log").read_text()[-4000:]
            raise AssertionError(f"the shared {name} repo was not built in {WAIT_S} s; builder.log ends:\n{log}")
        time.sleep(2)
    value = json.loads((root / f"{name}.json").read_text())
    return {**value, "repo": Path(value["repo"])}


if __name__ == "__main__":
    where = Path(sys.argv[1])
    for wanted in sys.argv[2:]:
        publish(where, wanted)
