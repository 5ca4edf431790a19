"""The sweep: one row per configuration, a fresh initialisation each time, validation numbers only.

The sweep never receives the test split: only its kept configuration (``<model>-tuned``) is scored on
test, by the evaluate_tuned stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr import CLASSES
from cxr.policy import ValidationPolicy
from cxr.training import sweep as S
from cxr.training.run_config import resolve_run_config
from pipeline_repo import load_stage
from toydata import cells, toy

SIZE = 16


def toy_split(n: int, seed: int):
    return toy(n, seed, size=SIZE, positive=2 / 3)


@pytest.fixture(scope="module")
def data():
    return {"train": toy_split(40, 0), "val": toy_split(20, 1), "test": toy_split(20, 2)}


@pytest.fixture(scope="module")
def base():
    return resolve_run_config({"epochs": 1, "image_size": SIZE, "seed": 3}, "cnn")


def _keys(tree) -> set[str]:
    """Every key of a nested dict."""
    if not isinstance(tree, dict):
        return set()
    return set(tree) | {k for v in tree.values() for k in _keys(v)}


def test_tiny_grid_one_row_per_config_selected_on_validation(data, base):
    res = S.run_sweep(base, [8, 16], [1e-3], data["train"], data["val"], device="cpu")
    t = res.table()
    assert list(t.columns) == S.TABLE_COLUMNS
    assert t[["batch_size", "lr"]].values.tolist() == [[8, 1e-3], [16, 1e-3]]
    assert t["selected"].sum() == 1
    assert t.loc[t["selected"], "val_auc"].item() == t["val_auc"].max()
    assert t[S.THRESHOLD_COLUMNS].apply(lambda c: c.between(0, 1)).all().all()
    s = res.summary()
    assert s["best"]["batch_size"] == t.loc[t["selected"], "batch_size"].item()
    assert s["best"]["val_balanced_accuracy"] == t.loc[t["selected"], "val_balanced_accuracy"].item()
    # Validation numbers only: no test column, no test key, not even a placeholder.
    assert not [c for c in t.columns if "test" in c] and not [k for k in _keys(s) if "test" in k]
    assert not [k for r in res.rows for k in r if "test" in k]
    np.testing.assert_array_equal(res.matrix("val_auc", [8, 16], [1e-3]), t[["val_auc"]].to_numpy())


def test_the_sweep_never_receives_the_test_split(data, base):
    """Only the kept configuration reaches the test split (evaluate_tuned): run_sweep has no way in for it."""
    import inspect

    assert not [p for p in inspect.signature(S.run_sweep).parameters if "test" in p]
    assert not [p for p in inspect.signature(S.train_config).parameters if "test" in p]
    with pytest.raises(TypeError):
        S.run_sweep(base, [8], [1e-3], data["train"], data["val"], data["test"], device="cpu")


def test_threshold_columns_use_the_evaluate_threshold(data, base):
    fixed = (
        S.run_sweep(
            base,
            [8],
            [1e-3],
            data["train"],
            data["val"],
            device="cpu",
            policy=ValidationPolicy(threshold="fixed", fixed_threshold=0.9),
        )
        .table()
        .iloc[0]
    )
    youden = S.run_sweep(base, [8], [1e-3], data["train"], data["val"], device="cpu").table().iloc[0]
    assert fixed["threshold"] == 0.9 and youden["threshold"] != 0.9
    assert fixed["val_auc"] == pytest.approx(youden["val_auc"])  # same training, only the operating point moved
    # The threshold columns follow the threshold, on the validation split.
    from cxr.training.fit import threshold_metrics

    assert fixed[S.THRESHOLD_COLUMNS].tolist() != youden[S.THRESHOLD_COLUMNS].tolist()
    assert set(threshold_metrics([0, 1], [0.2, 0.8], 0.5)) == set(S.THRESHOLD_COLUMNS)


def test_every_config_starts_from_a_fresh_initialisation(data, base):
    # Weights carried over from the previous configuration would change the first epoch's loss of
    # whichever configuration runs second; from scratch, the order cannot matter.
    a = S.run_sweep(base, [8, 16], [1e-3], data["train"], data["val"], device="cpu").table()
    b = S.run_sweep(base, [16, 8], [1e-3], data["train"], data["val"], device="cpu").table()
    first = {r.batch_size: r.first_epoch_train_loss for r in a.itertuples()}
    second = {r.batch_size: r.first_epoch_train_loss for r in b.itertuples()}
    assert first == pytest.approx(second, rel=0, abs=1e-7)
    assert first[8] != first[16]  # the configurations do differ


def _fake_fit(val_scores: dict):
    """A stand-in for training.fit: val metrics per (batch_size, lr) from ``val_scores``; no training."""

    def fit(cfg, train, val, policy=None, **kw):
        auc, loss = val_scores[(cfg.batch_size, cfg.lr)]
        best = {"best_epoch": 1, "val_auc": auc, "val_loss": loss, "val_acc": 0.5}
        return SimpleNamespace(
            model=(cfg.batch_size, cfg.lr),
            threshold=0.5,
            history=[{"train_loss": 1.0}],
            best=best,
            metrics=lambda: {**best, "threshold": 0.5, **dict.fromkeys(S.THRESHOLD_COLUMNS, 0.75)},
            card=SimpleNamespace(mean=(0.5,) * 3, std=(0.5,) * 3, calibrate=lambda p: p),
        )

    return fit


def test_diverged_configurations_are_reported_as_such_and_never_selected(monkeypatch, base):
    """A nine-digit validation loss (weights saturated at lr 0.01) and a NaN loss are rows marked
    diverged, not numbers, whatever their AUC; the heatmap matrix leaves them empty."""
    from cxr.evaluation.report import sweep_markdown
    from cxr.training.engine import TrainingDivergedError

    scores = {(8, 1e-3): (0.80, 0.3), (8, 1e-2): (0.95, 421430592.0), (16, 1e-3): (0.70, 0.35)}

    def fit(cfg, train, val, policy=None, **kw):
        if (cfg.batch_size, cfg.lr) == (16, 1e-2):
            raise TrainingDivergedError("the training loss became nan", lr=cfg.lr)
        return _fake_fit(scores)(cfg, train, val, **kw)

    monkeypatch.setattr(S, "fit", fit)
    x, y = np.zeros((4, SIZE, SIZE), np.uint8), np.array([0, 0, 1, 1])
    res = S.run_sweep(base, [8, 16], [1e-3, 1e-2], (x, y), (x, y))
    t = res.table().set_index(["batch_size", "lr"])
    assert t["diverged"].tolist() == [False, True, False, True]
    assert res.best["batch_size"] == 8 and res.best["lr"] == 1e-3  # 0.95 diverged: not selected
    m = res.matrix("val_auc", [8, 16], [1e-3, 1e-2])
    assert m[0, 0] == 0.80 and np.isnan(m[0, 1]) and np.isnan(m[1, 1])
    md = cells(sweep_markdown(res.table(), "val_auc"))
    assert md.count("| diverged |") == 2 and "421430592" not in md
    with pytest.raises(TrainingDivergedError, match="every configuration of the cnn sweep diverged"):
        S.run_sweep(base, [16], [1e-2], (x, y), (x, y))


def test_selection_on_the_validation_metric(monkeypatch, base):
    # bs=8 wins on validation ROC-AUC, bs=16 on validation loss.
    monkeypatch.setattr(S, "fit", _fake_fit({(8, 1e-3): (0.90, 0.3), (16, 1e-3): (0.80, 0.2)}))
    y = np.array([0, 0, 1, 1])
    x = np.zeros((4, SIZE, SIZE), np.uint8)
    res = S.run_sweep(base, [8, 16], [1e-3], (x, y), (x, y))
    t = res.table().set_index("batch_size")
    assert res.best["batch_size"] == 8 and bool(t.loc[8, "selected"]) and not bool(t.loc[16, "selected"])
    assert t["val_sensitivity"].tolist() == [0.75, 0.75]  # the fit's own validation numbers, as they come
    by_loss = S.run_sweep(base, [8, 16], [1e-3], (x, y), (x, y), select_metric="val_loss")
    assert by_loss.best["batch_size"] == 16  # lowest validation loss
    with pytest.raises(ValueError, match="val_auc or val_loss"):
        S.run_sweep(base, [8], [1e-3], (x, y), (x, y), select_metric="test_auc")


def _write_cache(root: Path, splits: dict) -> Path:
    root.mkdir(parents=True)
    for s, (x, y) in splits.items():
        np.save(root / f"{s}_images.npy", x)
        np.save(root / f"{s}_labels.npy", y)
        pd.DataFrame(
            {
                "path": [f"{s}/{i}.jpeg" for i in range(len(y))],
                "label": [CLASSES[c] for c in y],
                "patient_id": [str(i) for i in range(len(y))],
            }
        ).to_csv(root / f"{s}.csv", index=False)
    (root / "info.json").write_text(json.dumps({"cache_size": SIZE, "data_version": "v1"}))
    return root


def test_sweep_stage_outputs_and_nested_mlflow_runs(data, tmp_path, monkeypatch):
    # A cache without a test split: the stage must not need one (it never loads it).
    cache = _write_cache(tmp_path / "cache", {s: data[s] for s in ("train", "val")})
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "image_size": 64,
                "models": {"cnn": {}},
                "sweep": {"model": "cnn", "batch_sizes": [8, 16], "lrs": ["1e-03"], "epochs": 1, "image_size": SIZE},
                "mlflow": {"experiment": "sweep-test"},
            }
        )
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # MLflow artifacts under tmp_path, not the repository
    monkeypatch.setenv("DVC_EXP_NAME", "lr-bs")  # as inside `dvc exp run -n lr-bs`: the run names say so
    stage = load_stage("sweep")
    loaded: list[str] = []
    load_split = stage.load_split
    monkeypatch.setattr(stage, "load_split", lambda cache, split: loaded.append(split) or load_split(cache, split))
    out = tmp_path / "out"
    assert (
        stage.main(
            [
                "--params",
                str(params),
                "--cache",
                str(cache),
                "--metrics",
                str(out / "metrics/sweep.json"),
                "--table",
                str(out / "plots/sweep.csv"),
                "--figures",
                str(out / "figures/sweep"),
                "--tuned",
                str(out / "models/cnn-tuned"),
                "--tuned-metrics",
                str(out / "metrics/train/cnn-tuned.json"),
                "--tuned-history",
                str(out / "plots/history/cnn-tuned.csv"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(loaded) == ["train", "val"]
    table = pd.read_csv(out / "plots/sweep.csv")
    assert len(table) == 2 and table["selected"].sum() == 1
    assert list(table.columns) == S.TABLE_COLUMNS and not [c for c in table.columns if "test" in c]
    summary = json.loads((out / "metrics/sweep.json").read_text())
    assert summary["model"] == "cnn" and summary["n_configs"] == 2
    assert not [k for k in _keys(summary) if "test" in k]
    assert summary["best"]["batch_size"] == table.loc[table["selected"], "batch_size"].item()
    assert (out / "figures/sweep/heatmap.png").read_bytes()[:4] == b"\x89PNG"

    # The selected configuration is kept as a model, with the files train writes for one; nothing else is.
    from cxr import checkpoint

    _, card = checkpoint.load(out / "models/cnn-tuned")
    best = summary["best"]
    assert card.name == "cnn" and card.train_params["batch_size"] == best["batch_size"]
    assert card.train_params["lr"] == best["lr"] and card.threshold == pytest.approx(best["threshold"])
    assert card.data_source.kind == "synthetic"  # what the sweep trained on, as train records it
    kept = json.loads((out / "metrics/train/cnn-tuned.json").read_text())
    assert kept["val_auc"] == pytest.approx(best["val_auc"]) and kept["best_epoch"] == best["best_epoch"]
    assert {"threshold", "val_sensitivity", "epochs_run"} <= set(kept)
    history = pd.read_csv(out / "plots/history/cnn-tuned.csv")
    assert history["epoch"].tolist() == [1] and list(history.columns)[:2] == ["epoch", "train_loss"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["cnn-tuned"], "the other configurations' models"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "sweep cnn [lr-bs]"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["batch_size"] for r in children) == ["16", "8"]
    # The configurations' runs carry validation numbers, and no test number under any name.
    for r in runs:
        assert not [k for k in (*r.data.metrics, *r.data.tags, *r.data.params) if "test" in k.lower()], r.info.run_name
        assert not [i for i in r.inputs.dataset_inputs if i.dataset.name == "test"]
    assert all({"threshold", *S.THRESHOLD_COLUMNS} <= set(r.data.metrics) for r in children)
    # The per-epoch curves under a training run's names: the scheduled learning rate is not the lr param
    assert all({"epoch/scheduled_lr", "epoch/val_auc"} <= set(r.data.metrics) for r in children)
    assert not any("epoch/lr" in r.data.metrics for r in children)
    # Each configuration's run lasts as long as its training did (timing/seconds), not the milliseconds of
    # logging it afterwards, one after the other within the sweep's run.
    spans = sorted((r.info.start_time, r.info.end_time, r.data.metrics["seconds"]) for r in children)
    for start, end, seconds in spans:
        assert (end - start) / 1000 == pytest.approx(seconds, abs=0.05), spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert parents[0].info.start_time <= spans[0][0] and spans[-1][1] <= parents[0].info.end_time


def test_summary_holds_the_selected_configurations_validation_numbers():
    from cxr.training.sweep import SweepResult

    row = {
        "batch_size": 8,
        "lr": 1e-3,
        "val_auc": 0.7,
        "val_loss": 0.5,
        "val_acc": 0.6,
        "best_epoch": 1,
        "threshold": 0.5,
        "val_acc_at_threshold": 0.65,
        "val_balanced_accuracy": 0.6,
        "val_sensitivity": 0.8,
        "val_specificity": 0.4,
    }
    summary = SweepResult(model="cnn", select_metric="val_auc", rows=[row], best=dict(row)).summary()
    assert summary == {
        "model": "cnn",
        "select_metric": "val_auc",
        "n_configs": 1,
        "best": {k: v for k, v in row.items() if k != "val_acc"},
    }


def test_two_simulated_devices_give_the_one_device_table(data, base, tmp_path):
    """The grid over 2 worker processes ("cpu", "cpu": what 2 GPUs get, minus CUDA): the same rows in
    grid order, the same selection, each configuration trained once, in the worker processes."""
    import os

    cache = _write_cache(tmp_path / "cache", data)
    from cxr.data.cache import load_split

    splits = [load_split(cache, s) for s in ("train", "val")]
    assert isinstance(splits[0].images, np.memmap)  # as the stage passes them: memory-mapped, sent as file names
    args = [(s.images, s.labels) for s in splits]
    one = S.run_sweep(base, [8, 16], [1e-3, 1e-2], *args, device="cpu")
    two = S.run_sweep(base, [8, 16], [1e-3, 1e-2], *args, devices=["cpu", "cpu"])
    t1, t2 = one.table(), two.table()
    assert t2[["batch_size", "lr"]].values.tolist() == [[8, 1e-3], [8, 1e-2], [16, 1e-3], [16, 1e-2]]
    cols = [
        "val_auc",
        "val_loss",
        "val_acc",
        "best_epoch",
        "threshold",
        "val_balanced_accuracy",
        "first_epoch_train_loss",
    ]
    pd.testing.assert_frame_equal(t2[cols], t1[cols], atol=1e-5, rtol=0)  # thread counts differ: float noise only
    assert t2["selected"].tolist() == t1["selected"].tolist()
    # Every configuration ran in a worker process, not here. Which of the 2 takes which is the pool's
    # scheduling: on a loaded machine the first one up may take all four (it did once in CI).
    workers = {r["worker"] for r in two.rows}
    assert 1 <= len(workers) <= 2 and str(os.getpid()) not in " ".join(workers), workers
