"""src/train.py end to end on a tiny cache in tmp_path (subprocess): checkpoint, metrics, history, figure, MLflow."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess

import pytest
import yaml

from cxr.checkpoint import FORMAT_VERSION
from pipeline_repo import train_stage_cmd
from toydata import toy, write_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path, params):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_cache(
        tmp_path / "data" / "cache",
        {s: toy(n, i, balanced=True) for i, (s, n) in enumerate((("train", 24), ("val", 10), ("test", 6)))},
    )
    return tmp_path


def run_stage(workdir, repo_root, env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_ROOT": str(workdir), **env_extra}
    cmd = train_stage_cmd()
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def check_outputs(workdir):
    assert (workdir / "models/cnn/model.pt").is_file()
    meta = json.loads((workdir / "models/cnn/model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["cache_resize"] == "stretch"
    assert meta["data_source"]["kind"] == "synthetic" and meta["data_source"]["settings"]["seed"] == 0
    assert meta["arch"]["name"] == "cnn" and meta["cache_size"] == 20 and meta["data_version"] == "test-dv"
    metrics = json.loads((workdir / "metrics/train/cnn.json").read_text())
    assert {"val_auc", "val_loss", "val_acc", "best_epoch", "threshold"} <= set(metrics)
    with (workdir / "plots/history/cnn.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # DVC-tracked files are deterministic: timings and run ids live in MLflow only
    assert not {"seconds", "train_images_per_s"} & set(rows[0])
    assert "seconds_per_epoch" not in metrics and "mlflow_run_id" not in meta and "git_commit" not in meta
    assert not (workdir / "figures").exists()  # no figure: evaluate draws the curves (plots.py retrains nothing)
    assert not (workdir / "data/resume/cnn.pt").exists()  # removed after a completed fit


def mlflow_ui_chart_order(keys) -> list[str]:
    """The order MLflow 3's run page draws a run's model-metric charts in: keys ``<section>/<name>`` grouped by
    section, sections sorted, ahead of "Model metrics" (the keys with no "/"), each alphabetically
    (mlflow/server/js runs-charts.types.ts, ``getBaseChartAndSectionConfigs``)."""
    return sorted(keys, key=lambda k: ("/" not in k, k.rpartition("/")[0], k))


def test_train_stage_end_to_end(workdir, repo_root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir}/mlflow.db"
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outputs(workdir)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("chest-xray-pneumonia")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "cnn" and run.data.params["image_size"] == "16"
    assert run.data.tags["seed"] == run.data.params["seed"]  # the UI groups runs over seeds by this tag
    assert len(client.get_metric_history(run.info.run_id, "epoch/train_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "timing/seconds")) == 2  # per-epoch timings: MLflow only
    # What the "Model metrics" tab charts: the learning curves first, then the timings, then four final values;
    # system metrics have a tab of their own.
    curves = {f"epoch/{k}" for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "scheduled_lr")}
    timings = {"timing/seconds", "timing/train_images_per_s"}
    finals = {"best_epoch", "best_val_auc", "best_val_loss", "threshold"}
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert set(run.data.metrics) - system == curves | timings | finals
    order = mlflow_ui_chart_order(curves | timings | finals)
    assert [set(order[:6]), set(order[6:8])] == [curves, timings]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "timing/train_images_per_s")}
    assert steps == {1, 2}  # no stray point at step 0
    # The splits training reads as dataset inputs, named, with the cache's data version as digest; not
    # the test split, which only evaluate's run logs.
    meta = json.loads((workdir / "models/cnn/model.json").read_text())
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    assert {d.dataset.digest for d in inputs.values()} == {meta["data_version"][:32]}
    assert json.loads(inputs["train"].dataset.source)["uri"].endswith("train_images.npy")
    assert {t.value for t in inputs["val"].tags if t.key == "mlflow.data.context"} == {"validation"}
    tables = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "validation_metrics.json" in tables
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.json" in arts


def test_train_stage_with_unreachable_mlflow_server(workdir, repo_root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unreachable" in proc.stderr
    check_outputs(workdir)


def test_train_stage_reports_missing_weights_without_traceback(workdir, repo_root, tmp_path):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["models"]["cnn"] = {"weights": str(tmp_path / "missing.pt")}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"})
    assert proc.returncode != 0
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_train_stage_saves_the_evaluate_threshold(workdir, repo_root):
    # The threshold saved with the model (used by predict and the served model) follows
    # evaluate.threshold, so the operating point evaluate reports is the deployed one.
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["evaluate"].update(threshold="fixed", fixed_threshold=0.37)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((workdir / "models/cnn/model.json").read_text())
    assert meta["threshold"] == 0.37 and meta["threshold_method"] == "fixed"
    assert json.loads((workdir / "metrics/train/cnn.json").read_text())["threshold"] == 0.37


def _start(workdir, repo_root, db):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_ROOT": str(workdir), "MLFLOW_TRACKING_URI": db}
    cmd = train_stage_cmd()
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, seconds=120):
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _train_runs(db):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=db)
    exp = client.get_experiment_by_name("chest-xray-pneumonia")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_killed_runs_do_not_stay_running(workdir, repo_root):
    """SIGTERM ends the MLflow run as KILLED; after kill -9 (no handler runs) the resumed run marks it KILLED."""
    import signal

    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["epochs"] = 200  # long enough to be interrupted after its first epoch
    params["train"]["resume_every"] = 0  # a resume state after every epoch
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    db = f"sqlite:///{workdir}/mlflow.db"
    resume = workdir / "data/resume/cnn.pt"

    proc = _start(workdir, repo_root, db)
    _wait_for(resume, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) != 0
    assert [r.info.status for r in _train_runs(db)] == ["KILLED"]

    proc = _start(workdir, repo_root, db)  # resumes, then dies without a chance to end its run
    _wait_for(workdir / "mlflow.db", proc)
    import time

    deadline = time.monotonic() + 120
    while len(_train_runs(db)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=30)
    assert [r.info.status for r in _train_runs(db)] == ["KILLED", "RUNNING"]

    proc = _start(workdir, repo_root, db)  # finds the orphan's resume file: the orphan's run died with it
    deadline = time.monotonic() + 120
    while len(_train_runs(db)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.terminate()
    proc.wait(timeout=180)  # generous: on a loaded 2-core machine the stage may still be importing torch
    assert [r.info.status for r in _train_runs(db)] == ["KILLED", "KILLED", "KILLED"]


def test_train_stage_on_two_processes_under_torchrun(workdir, repo_root):
    """train.devices: 2 on CPU: the stage relaunches itself under torchrun (2 gloo processes); rank 0
    alone writes the outputs and the one MLflow run."""
    from mlflow import MlflowClient

    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train"]["devices"] = 2
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{workdir}/mlflow.db"
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc-per-node=2" in proc.stdout
    assert "x 2 processes (DDP)" in proc.stdout and proc.stdout.count("best epoch") == 1
    check_outputs(workdir)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("chest-xray-pneumonia")
    (run,) = client.search_runs([exp.experiment_id])  # one run, not one per process
    assert (
        run.data.tags["world_size"] == "2" and len(client.get_metric_history(run.info.run_id, "epoch/train_loss")) == 2
    )

    params["batch_size"] = 7  # not a multiple of 2: refused before any process starts
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage(workdir, repo_root, {"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1 and "not a multiple of train.devices = 2" in proc.stderr
    assert "Traceback" not in proc.stderr
