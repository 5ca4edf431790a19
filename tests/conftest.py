"""Shared fixtures: the test params (one place), synthetic images in tmp_path, and the real images in ../shared/data.

Tests that need ../shared/data use the ``shared_data`` fixture. Where the folder is absent they
skip, except when CXR_REQUIRE_SHARED=1 (as .ci/run sets): then they fail, so CI cannot pass them
silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def mlflow_environment_restored():
    """mlflow.set_tracking_uri / set_registry_uri export MLFLOW_*_URI for subprocesses. Whatever a test (or
    the code it runs in-process) set there is undone after it, so no later test's pipeline writes into
    that test's store (a leaked registry URI once sent the workflow tests' registrations elsewhere)."""
    before = {k: os.environ.get(k) for k in MLFLOW_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# What every unit test trains with unless it says otherwise: tiny and fast on a 2-core CPU.
TEST_PARAMS = {"epochs": 2, "image_size": 16, "batch_size": 8}


@pytest.fixture
def params(repo_root) -> dict:
    """The shipped params.yaml with TEST_PARAMS on top and no per-model overrides (the shipped
    ``models.cnn.epochs`` would hide the test's epochs); a fresh copy for each test to change."""
    from cxr.config import load_params

    p = load_params(repo_root / "params.yaml")
    p.update(TEST_PARAMS)
    p["models"] = {name: {} for name in p["models"]}
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (read-only real Kermany images): kermany224/ and kermany-fullres/."""
    if not (SHARED_DATA / "kermany224" / "train").is_dir():
        msg = f"real images not found at {SHARED_DATA} (set CXR_SHARED_DATA to their folder)"
        if os.environ.get("CXR_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; CXR_REQUIRE_SHARED=1 makes these tests mandatory")
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory) -> Path:
    """A small synthetic canonical tree raw/{train,val,test}/{NORMAL,PNEUMONIA}/ (session-wide, read-only
    by convention)."""
    from cxr.config import SyntheticConfig
    from cxr.data.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic") / "raw"
    generate(out, SyntheticConfig(patients=40, max_images_per_patient=3, min_size=96, max_size=160, seed=1))
    return out


@pytest.fixture
def on_a_terminal(monkeypatch):
    """Progress bars drawn as on a terminal (under pytest stderr is not one, so cxr.stage draws none)."""
    import cxr.stage
    import cxr.training.engine

    def drawn(wanted: bool = True, stream=None) -> bool:
        return bool(wanted)

    monkeypatch.setattr(cxr.stage, "progress_enabled", drawn)
    monkeypatch.setattr(cxr.training.engine, "progress_enabled", drawn)


# The modules whose tests share the pipeline repos below (built once per pytest process): under
# `pytest -n 2 --dist loadgroup` (make test) one worker takes all of them, first, while the other runs the rest.
SHARED_PIPELINE_MODULES = (
    "tests/test_workflows.py",
    "tests/test_plots_offline.py",
    "tests/test_weights_stage.py",
    "tests/hostile/test_hostile_killed_compare.py",
)


# Modules whose tests run in order on one worker: one team stack for the module, make team-down its last test.
ONE_WORKER_MODULES = ("tests/team/test_team_stack.py",)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs without the plugin
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadgroup, by module: pytest 9 keeps a node's id in ``_id``, so the ``@group`` suffix that
    pytest-xdist 3.8 writes to ``item._nodeid`` for ``xdist_group`` marks never reaches the scheduler (every
    test became its own unit, and both workers built the shared repos). The largest unit is sent first."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedPipelineScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if module in SHARED_PIPELINE_MODULES:
                return "shared-pipeline"
            return module if module in ONE_WORKER_MODULES else nodeid

    return SharedPipelineScheduling(config, log)


# The tiny whole-pipeline repos the end-to-end tests (test_workflows, test_plots_offline) share: each is built
# once a session, on first use. Read-only by convention: a test that changes one (runs a stage or an
# experiment, writes into its workspace) works on its own pipeline_repo.copy_repo of it.
@pytest.fixture(scope="session")
def pipeline_baseline(tmp_path_factory) -> dict:
    """pipeline_repo.build_baseline: after one whole ``dvc repro``, results committed as the baseline.
    {"repo": Path, "first": that repro's stdout}."""
    from pipeline_repo import build_baseline

    return build_baseline(tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture(scope="session")
def pipeline_experiment(pipeline_baseline, tmp_path_factory) -> dict:
    """A copy of pipeline_baseline after ``dvc exp run -n lr-bs -S lr=1e-4 -S batch_size=16``: the experiment's
    results are in the workspace, HEAD holds the baseline's. pipeline_baseline's keys, plus "exp_out" (that
    run's stdout) and "n_before" (the MLflow runs before it)."""
    from pipeline_repo import copy_repo, experiment_runs, run

    repo = copy_repo(pipeline_baseline["repo"], tmp_path_factory.mktemp("experiment") / "repo")
    n_before = len(experiment_runs(repo))
    out = run(["dvc", "exp", "run", "-n", "lr-bs", "-S", "lr=1e-4", "-S", "batch_size=16"], repo, timeout=1800)
    return {**pipeline_baseline, "repo": repo, "exp_out": out.stdout, "n_before": n_before}
