"""MLflow adapter: store location, a run with the expected params and per-epoch metrics, graceful degradation."""

from __future__ import annotations

import inspect
import json
import socket
import time

import pytest

from cxr.run_context import artifact_location, run_tags, tracking_uri
from cxr.tracking import MlflowTracker, NullTracker, make_tracker
from cxr.training.fit import fit
from cxr.training.run_config import RunConfig, resolve_run_config
from toydata import toy


@pytest.fixture
def run_cfg(params) -> RunConfig:
    return resolve_run_config(params, "cnn")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifact_location() == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking_uri() == "http://example.invalid:5000"


def test_null_tracker_has_the_same_methods():
    public = lambda cls: {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}
    assert public(NullTracker) == public(MlflowTracker)


def test_run_with_params_and_per_epoch_metrics(monkeypatch, tmp_path, run_cfg):
    from mlflow import MlflowClient

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # artifacts anchored in the "real" repo
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = make_tracker("cxr-test", uri=uri)
    assert isinstance(tracker, MlflowTracker)
    with tracker.start_run("cnn", tags=run_tags("cnn", data_version="dv1", device="cpu")):
        result = fit(run_cfg, toy(16, 0, balanced=True), toy(8, 1, balanced=True), tracker=tracker, progress=False)
        tracker.log_model(result.model, image_size=16)
        run_id = tracker.run_id
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("cxr-test")
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    # The UI opens on training runs, not on MLflow 3's GenAI overview.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "cnn"
    assert set(run.data.params) == set(run_cfg.as_params())
    # the nested augmentation flattened once, under the keys MLflow has always shown
    assert {"aug_enabled", "aug_crop_scale_min", "aug_crop_scale_max", "aug_gamma_max"} <= set(run.data.params)
    assert "augment" not in run.data.params
    assert float(run.data.params["aug_crop_scale_min"]) == run_cfg.augment.crop_scale[0]
    assert float(run.data.params["lr"]) == run_cfg.lr and run.data.params["model"] == "cnn"
    assert run.data.tags["dvc_exp_name"] == "exp-test" and run.data.tags["data_version"] == "dv1"
    assert run.data.tags["model"] == "cnn" and "git_commit" in run.data.tags
    hist = client.get_metric_history(run_id, "epoch/val_loss")
    assert sorted(m.step for m in hist) == [1, 2]
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
        [h["val_loss"] for h in result.history]
    )
    # One name per thing: the param is lr, the per-epoch scheduled value scheduled_lr; curves in section "epoch"
    assert {"epoch/scheduled_lr", "epoch/val_auc"} <= set(run.data.metrics)
    assert not {"lr", "epoch/lr", "val_auc"} & set(run.data.metrics)
    models = client.search_logged_models([exp.experiment_id])
    assert any(m.source_run_id == run_id for m in models)


def test_unreachable_server_degrades_and_training_finishes(monkeypatch, run_cfg):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="unreachable"):
        tracker = make_tracker("cxr-test")
    assert time.perf_counter() - start < 30  # no minutes of retries
    assert isinstance(tracker, NullTracker) and not isinstance(tracker, MlflowTracker)
    with tracker.start_run("cnn"):
        result = fit(run_cfg, toy(16, 0, balanced=True), toy(8, 1, balanced=True), tracker=tracker, progress=False)
    assert len(result.history) == 2


def test_failure_mid_run_warns_once_and_disables(monkeypatch, tmp_path):
    tracker = MlflowTracker("cxr-test", uri=f"sqlite:///{tmp_path}/mlflow.db")
    with tracker.start_run("x"):

        def broken(*a, **k):
            raise ConnectionError("server went away")

        monkeypatch.setattr(tracker._client, "log_batch", broken)
        with pytest.warns(RuntimeWarning, match="server went away"):
            tracker.log_metrics({"a": 1.0}, step=1)
        tracker.log_metrics({"a": 2.0}, step=2)  # no second warning, no exception
        assert not tracker.active
    import mlflow

    assert mlflow.active_run() is None  # not left open to capture the next run in this process


def test_sigterm_during_a_store_write_lands_after_it_and_the_run_ends_killed(monkeypatch, tmp_path):
    """`dvc queue kill` (SIGTERM) arriving while MLflow writes: the write completes, then the run ends KILLED
    (raised inside the store's transaction, it once left the run RUNNING)."""
    import os
    import signal

    from mlflow import MlflowClient

    from cxr.signals import StageInterrupted

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = MlflowTracker("sig", uri)
    real_log_batch = tracker._client.log_batch

    def log_batch_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # mid-call, as a kill during the epoch's metrics
        time.sleep(0.05)  # an unmasked signal would raise here, inside the write
        return real_log_batch(*args, **kwargs)

    monkeypatch.setattr(tracker._client, "log_batch", log_batch_interrupted)
    with pytest.raises(StageInterrupted, match="SIGTERM"):
        with tracker.start_run("cnn", tags={"stage": "train"}):
            run_id = tracker.run_id
            tracker.log_metrics({"val_auc": 0.75}, step=1)
            pytest.fail("the interruption must arrive right after the write, before the next statement")
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"epoch/val_auc": 0.75}  # the interrupted write was completed, not lost
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_an_experiment_made_before_the_kind_tag_and_the_view_gets_them(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("old-exp")  # as earlier versions of this pipeline made it: no kind, no view
    assert not {"mlflow.experimentKind", "mlflow.sharedViewState.models"} & set(
        client.get_experiment_by_name("old-exp").tags
    )
    make_tracker("old-exp", uri=uri)
    tags = client.get_experiment_by_name("old-exp").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow's saved-view envelope: a name, a creation time in ms, and the page state as a JSON string
    view = json.loads(tags["mlflow.sharedViewState.models"])
    assert view["name"] == "Models: params beside test results" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["searchFilter"] == "tags.stage = 'train'"
    assert {"params.`lr`", "metrics.`test_roc_auc`", "metrics.`threshold`"} <= set(state["selectedColumns"])
