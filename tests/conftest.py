"""Shared fixtures: the test params (one place), synthetic images in tmp_path, and the real images in ../shared/data.

Tests that need ../shared/data use the ``shared_data`` fixture. Where the folder is absent they
skip, except when CXR_REQUIRE_SHARED=1 (as .ci/run sets): then they fail, so CI cannot pass them
silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under `pytest -n N` each worker is a torch process, and torch takes one intra-op thread per core in each: N
# workers' OpenMP threads (spinning while they wait) oversubscribe the cores and starve each other and the
# stage processes the end-to-end tests start. Each worker gets its share, set before torch loads (a worker
# imports conftest first); a value the caller set stays, and without xdist torch keeps its default. Measured:
# `pytest -n 2 tests/models tests/training` took 173 s wall and 303 s of CPU with torch's default, 139 s and
# 229 s with one thread per worker.
if "PYTEST_XDIST_WORKER" in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

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
    from cxr.data.config import SyntheticConfig
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


# Modules whose tests run in order on one worker: one team stack for the module, make team-down its last test.
ONE_WORKER_MODULES = ("tests/team/test_team_stack.py",)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs without the plugin
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadgroup, by module: pytest 9 keeps a node's id in ``_id``, so the ``@group`` suffix that
    pytest-xdist 3.8 writes to ``item._nodeid`` for ``xdist_group`` marks never reaches the scheduler (every
    test became its own unit). A module of ONE_WORKER_MODULES is one unit (the largest is sent first); every
    other test is its own, the end-to-end ones included: they wait for the shared repos' builder below."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModuleUnitScheduling(config, log)


# The tiny whole-pipeline repos the end-to-end tests share (tests/shared_pipelines.py): under `pytest -n` one
# builder process, started by the controller once a worker has collected a test that reads them, builds them
# while the workers run the other tests. Read-only by convention: a test that runs dvc or MLflow in one, or
# writes into it, works on its own pipeline_repo.copy_repo of it.
BUILDER = pytest.StashKey["subprocess.Popen"]()


def _shared_root(base: Path) -> Path:
    return base / "shared-pipelines"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Controller: start the builder when the first worker reports a collected test that reads the repos."""
    from shared_pipelines import BASELINE_MODULES, EXPERIMENT_MODULES, start_builder

    config = node.config
    if config.stash.get(BUILDER, None) is not None:
        return
    modules = {i.split("::", 1)[0] for i in ids}
    names = ["baseline"] if modules & set(BASELINE_MODULES) else []
    names += ["experiment"] if names and modules & set(EXPERIMENT_MODULES) else []
    if names:
        config.stash[BUILDER] = start_builder(_shared_root(config._tmp_path_factory.getbasetemp()), names)


def pytest_unconfigure(config):
    proc = config.stash.get(BUILDER, None)
    if proc is not None:
        from pipeline_repo import stop_group

        stop_group(proc)


def pytest_collection_modifyitems(config, items):
    """A test that reads the shared repos may wait for their build first: its timeout covers that wait."""
    from shared_pipelines import WAIT_S

    for item in items:
        if {"pipeline_baseline", "pipeline_experiment"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(WAIT_S + 1800), append=False)


def _worker_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()  # an xdist worker's is <the controller's>/popen-gwN
    return _shared_root(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@pytest.fixture(scope="session")
def pipeline_baseline(tmp_path_factory) -> dict:
    """pipeline_repo.build_baseline: after one whole ``dvc exp run`` at tiny sizes, results committed as the
    baseline. {"repo": Path, "first": that run's stdout, "args": its arguments}."""
    from pipeline_repo import build_baseline
    from shared_pipelines import shared_repo

    def here() -> dict:
        return build_baseline(tmp_path_factory.mktemp("pipeline") / "repo")

    return shared_repo(_worker_root(tmp_path_factory), "baseline", here)


@pytest.fixture(scope="session")
def pipeline_experiment(pipeline_baseline, tmp_path_factory) -> dict:
    """A copy of pipeline_baseline after ``dvc exp run -n lr-bs -S lr=1e-4 -S batch_size=16``: the experiment's
    results are in the workspace, HEAD holds the baseline's. pipeline_baseline's keys, plus "exp_out" (that
    run's stdout) and "n_before" (the MLflow runs before it)."""
    from shared_pipelines import build_experiment, shared_repo

    def here() -> dict:
        return build_experiment(pipeline_baseline, tmp_path_factory.mktemp("experiment") / "repo")

    return shared_repo(_worker_root(tmp_path_factory), "experiment", here)
