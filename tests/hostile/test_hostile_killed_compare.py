"""``kill -9`` of ``dvc repro`` (or of the stage) while ``compare`` waits to register the selected model, in a copy
of the shared tiny pipeline (conftest's pipeline_baseline), with the real ``dvc``.

On afc5b64 the orphaned compare.py went on to register a version after ``dvc`` was gone, and the runs of a
killed compare stayed RUNNING through later clean runs. The test holds the registry's lock file
(``.dvc/tmp/cxr-champion.lock``, as a second queued experiment would) so that the kill lands while compare
waits for it, right before it registers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cxr.locks import locked
from pipeline_repo import BIN, copy_repo, env, experiment_runs, mlflow_client, run

pytestmark = pytest.mark.slow
REGISTERED = "cxr-pneumonia"  # params.yaml's mlflow.registered_model


def _waiting_compare(repo: Path, dvc: subprocess.Popen, timeout: float = 300) -> psutil.Process:
    """The compare.py that ``dvc`` started, once it is blocked on a file lock (a ``->`` line of /proc/locks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert dvc.poll() is None, f"dvc ended ({dvc.returncode}) before compare waited for the lock"
        for p in psutil.Process(dvc.pid).children(recursive=True):
            try:
                if any(a.endswith("compare.py") for a in p.cmdline()):
                    waiting = [ln for ln in Path("/proc/locks").read_text().splitlines() if "->" in ln]
                    if any(ln.split()[5] == str(p.pid) for ln in waiting):
                        return p
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    raise AssertionError(f"compare did not wait for the registry lock within {timeout:.0f} s")


def _compare_runs(repo: Path) -> list:
    runs = [r for r in experiment_runs(repo) if r.data.tags.get("stage") == "compare"]
    return sorted(runs, key=lambda r: r.info.start_time)


def _versions(repo: Path) -> list[str]:
    return sorted(str(v.version) for v in mlflow_client(repo).search_model_versions(f"name = '{REGISTERED}'"))


def _dvc_compare(repo: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "dvc"), "repro", "-f", "-s", "compare"],
            cwd=repo,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_killed_dvc_or_stage_leaves_no_registration_and_no_run_running(pipeline_baseline, tmp_path):
    repo = copy_repo(pipeline_baseline["repo"], tmp_path / "repo")
    lock = repo / ".dvc" / "tmp" / "cxr-champion.lock"
    versions = _versions(repo)
    assert versions, "the baseline's compare registered no version"

    # 1. dvc killed while compare waits: compare, orphaned, registers nothing and ends its run as KILLED.
    with locked(lock):
        dvc = _dvc_compare(repo, tmp_path / "dvc-1.log")
        compare = _waiting_compare(repo, dvc)
        os.kill(dvc.pid, signal.SIGKILL)
        dvc.wait()
        assert compare.is_running(), "compare ended with dvc: nothing left to test"
    compare.wait(timeout=120)
    assert _versions(repo) == versions, "an orphaned compare registered a version after dvc was killed"
    assert _compare_runs(repo)[-1].info.status == "KILLED"

    # 2. the stage itself killed while it waits: its run is left RUNNING (nothing can end it from inside) ...
    with locked(lock):
        dvc = _dvc_compare(repo, tmp_path / "dvc-2.log")
        _waiting_compare(repo, dvc).send_signal(signal.SIGKILL)
        assert dvc.wait(timeout=120) != 0
    assert _compare_runs(repo)[-1].info.status == "RUNNING"

    # ... until the next stage starts, which ends it; the same checkpoint is not registered a second time.
    out = run([str(BIN / "dvc"), "repro", "-f", "-s", "compare"], repo).stdout
    assert "already registered" in out, out[-2000:]
    assert not [r.info.run_name for r in experiment_runs(repo) if r.info.status == "RUNNING"]
    assert _versions(repo) == versions
