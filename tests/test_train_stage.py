"""src/train.py end to end on a tiny cache in tmp_path (subprocess): checkpoint, metrics, history, figure, MLflow."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def write_cache(cache, size=20):
    """The preprocess stage's format: {split}_images.npy uint8 (N,S,S), {split}_labels.npy, {split}.csv, info.json."""
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 10), ("test", 6)):
        y = np.tile([0, 1], n // 2).astype(np.int64)
        x = rng.integers(0, 80, (n, size, size)).astype(np.uint8)
        x[y == 1, 4:14, 6:16] = 220
        np.save(cache / f"{split}_images.npy", x)
        np.save(cache / f"{split}_labels.npy", y)
        with (cache / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "patient_id"])
            w.writerows([[f"{split}/img{i}.jpeg", int(y[i]), f"p{i}"] for i in range(n)])
    info = {"cache_size": size, "resize": "stretch", "classes": ["NORMAL", "PNEUMONIA"],
            "counts": {}, "data_version": "test-dv"}
    (cache / "info.json").write_text(json.dumps(info))


@pytest.fixture
def workdir(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params.update(epochs=2, image_size=16, batch_size=8)
    params["models"]["cnn"] = {}  # tests set epochs globally; drop the shipped per-model override
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_cache(tmp_path / "data" / "cache")
    return tmp_path


def run_stage(workdir, repo_root, env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_ROOT": str(workdir), **env_extra}
    cmd = [sys.executable, str(repo_root / "src" / "train.py"), "--params", "params.yaml", "--model", "cnn",
           "--cache", "data/cache", "--out", "models/cnn", "--metrics", "metrics/train/cnn.json",
           "--history", "plots/history/cnn.csv", "--figures", "figures/train/cnn", "--no-progress"]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def check_outputs(workdir):
    assert (workdir / "models/cnn/model.pt").is_file()
    meta = json.loads((workdir / "models/cnn/model.json").read_text())
    assert meta["arch"]["name"] == "cnn" and meta["cache_size"] == 20 and meta["data_version"] == "test-dv"
    metrics = json.loads((workdir / "metrics/train/cnn.json").read_text())
    assert {"val_auc", "val_loss", "val_acc", "best_epoch", "threshold"} <= set(metrics)
    with (workdir / "plots/history/cnn.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # DVC-tracked files are deterministic: timings and run ids live in MLflow only
    assert not {"seconds", "train_images_per_s"} & set(rows[0])
    assert "seconds_per_epoch" not in metrics and "mlflow_run_id" not in meta and "git_commit" not in meta
    png = (workdir / "figures/train/cnn/curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (workdir / "data/resume/cnn.pt").exists()  # removed after a completed fit


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
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert "best_val_auc" in run.data.metrics and run.data.metrics["seconds_per_epoch"] > 0
    assert len(client.get_metric_history(run.info.run_id, "seconds")) == 2  # per-epoch timings: MLflow only
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "model.json"} <= arts


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
