"""MLflow runs whose process was killed with -9, and registrations nobody asks for any more.

On afc5b64, SIGKILL of ``dvc repro`` during ``compare`` left the checkpoint's training run (reopened to
log the model) and the compare runs RUNNING, and a later clean ``compare`` did not end them; only the
train stage ended stale runs, of its own configuration. The end-to-end case (``dvc`` killed while
``compare`` waits) is in test_hostile_killed_compare.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cxr import processes
from cxr.evaluation.promotion import register_candidate
from cxr.tracking import make_tracker
from toydata import make_checkpoint

pytestmark = pytest.mark.slow
METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")

HOLDER = r"""
import sys, time
from cxr.tracking import make_tracker
tracker = make_tracker("runs", sys.argv[1])
with tracker.start_run("a stage", tags={"stage": "compare"}):
    outer = tracker.run_id
    with tracker.start_run("a sweep configuration", nested=True):
        print(outer, tracker.run_id, flush=True)
        time.sleep(600)
"""


def _holder(uri: str) -> tuple[subprocess.Popen, list[str]]:
    """A process holding a run and a nested run open: the process and the two run ids."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, uri], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().split()


def test_runs_of_a_process_killed_with_9_are_ended_when_the_next_run_starts(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the experiment's artifacts in tmp_path/mlartifacts
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed, killed_runs = _holder(uri)
    alive, alive_runs = _holder(uri)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        tracker = make_tracker("runs", uri)
        other_host = tracker._client.create_run(tracker.experiment_id, tags={"host": "elsewhere", "process": "x"})
        with tracker.start_run("the next stage"):
            pass
        status = {r: tracker._client.get_run(r).info.status for r in [*killed_runs, *alive_runs]}
        assert [status[r] for r in killed_runs] == ["KILLED", "KILLED"], status
        assert [status[r] for r in alive_runs] == ["RUNNING", "RUNNING"], "a live process's runs were ended"
        assert tracker._client.get_run(other_host.info.run_id).info.status == "RUNNING"  # not ours to judge
        assert "marked KILLED 2 run(s) whose process had ended" in capfd.readouterr().err
    finally:
        alive.kill()
        alive.wait()


def test_a_process_is_told_apart_from_a_later_one_reusing_its_pid():
    me = processes.identity()
    host, pid, started = me.split("/")
    assert processes.alive(me) is True
    assert processes.alive(f"{host}/{pid}/{float(started) - 1000:.2f}") is False  # same pid, another start
    assert processes.alive(f"elsewhere/{pid}/{started}") is None


def _training_run(tracker, card) -> str:
    from cxr.training.run_config import flat_params

    tags = {"model": card.name, "stage": "train", "data_version": card.data_version}
    with tracker.start_run("train", tags=tags):
        tracker.log_params(flat_params(card.train_params))
        return tracker.run_id


def test_registering_a_checkpoint_twice_keeps_one_version_and_leaves_its_training_run_as_it_was(tmp_path, monkeypatch):
    from cxr.checkpoint import load_card

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the experiment's artifacts in tmp_path/mlartifacts
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = make_tracker("registry", uri)
    ckpt = make_checkpoint(tmp_path / "models" / "cnn")
    run_id = _training_run(tracker, load_card(ckpt))
    before = tracker._client.get_run(run_id).info
    kwargs = dict(
        registered_name="cxr-test",
        alias="champion",
        select_metric="val_auc",
        value=0.9,
        report={"n": 40, "at_val_threshold": {k: {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9} for k in METRICS}},
        lock_path=tmp_path / "champion.lock",
    )
    with tracker.start_run("compare"):
        first = register_candidate(tracker, ckpt, **kwargs)
    with tracker.start_run("compare again"):
        second = register_candidate(tracker, ckpt, **kwargs)
    versions = tracker._client.search_model_versions("name = 'cxr-test'")
    assert [str(v.version) for v in versions] == [first.version] and second.version == first.version
    assert "already registered" in second.message
    after = tracker._client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
    assert versions[0].run_id == run_id  # the version's source is still the training run
