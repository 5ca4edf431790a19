"""The evaluation core and the evaluate stage on a tiny trained CNN and a tiny cache in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr import CLASSES, checkpoint
from cxr.config import EvaluateConfig
from cxr.evaluation.evaluate import (
    confusion_table,
    evaluate_checkpoint,
    evaluate_probabilities,
    evaluation_figures,
    gallery_indices,
    predictions_table,
)
from cxr.policy import ValidationPolicy
from cxr.training.fit import fit
from cxr.training.run_config import resolve_run_config
from pipeline_repo import load_stage
from toydata import toy, write_cache

SIZE = 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch CNN at 16 px, saved as a checkpoint, plus its history and the data."""
    root = tmp_path_factory.mktemp("eval")
    data = {"train": toy(48, 0), "val": toy(24, 1), "test": toy(30, 2)}
    params = {"epochs": 2, "image_size": 16, "batch_size": 8, "lr": 3e-3, "seed": 0}
    cfg = resolve_run_config(params, "cnn")
    res = fit(
        cfg,
        data["train"],
        data["val"],
        # a temperature and a refer band in the card (a low confidence: the toy split is small): evaluate reports both
        ValidationPolicy(calibrate=True, refer_target=0.1, confidence=0.5),
        device="cpu",
        progress=False,
        data_version="test123",
    )
    checkpoint.save(root / "models" / "cnn", res.model, res.card)
    history = pd.DataFrame(res.history)
    history.to_csv(root / "history.csv", index=False)
    cache = write_cache(root / "cache", data, data_version="test123")
    return {"root": root, "data": data, "model": res.model, "card": res.card, "history": history, "cache": cache}


def test_predictions_and_confusion_tables_use_class_names():
    t = predictions_table(["a", "b", "c"], [0, 1, 1], [0.2, 0.7, 0.4], threshold=0.5)
    assert list(t.columns) == ["path", "label", "probability", "predicted"]
    assert t["predicted"].tolist() == ["NORMAL", "PNEUMONIA", "NORMAL"]
    c = confusion_table([0, 1, 1], [0, 1, 0])
    assert list(c.columns) == ["actual", "predicted"]
    assert c.values.tolist() == [["NORMAL", "NORMAL"], ["PNEUMONIA", "PNEUMONIA"], ["PNEUMONIA", "NORMAL"]]


def test_gallery_picks_most_confident_of_each_outcome():
    y = np.array([1, 1, 0, 0, 0, 1, 1])
    p = np.array([0.9, 0.6, 0.1, 0.3, 0.8, 0.2, 0.45])
    idx = gallery_indices(y, p, 0.5, per_outcome=1)
    assert idx.tolist() == [0, 2, 4, 5]  # TP 0.9, TN 0.1, FP 0.8, FN 0.2 (most wrong)


def test_threshold_is_the_cards_not_chosen_on_test():
    rng = np.random.default_rng(0)
    yt = np.r_[np.zeros(10, int), np.ones(10, int)]
    pt = np.r_[rng.uniform(0, 0.7, 10), rng.uniform(0.7, 1, 10)]  # test would prefer ~0.7
    cfg = EvaluateConfig(n_resamples=20)
    r = evaluate_probabilities("cnn", 0.3, "youden", yt, pt, [f"i{i}" for i in range(20)], cfg, n_val=40)
    assert r.threshold == 0.3 and r.report["threshold_method"] == "youden" and r.report["n_val"] == 40
    assert r.report["at_val_threshold"]["threshold"] == r.threshold
    assert r.report["at_default_threshold"]["threshold"] == 0.5
    fixed = evaluate_probabilities("cnn", 0.42, "fixed", yt, pt, [f"i{i}" for i in range(20)], cfg)
    assert fixed.threshold == 0.42


def test_evaluate_checkpoint_and_figures(trained):
    d = trained["data"]
    cfg = EvaluateConfig(n_resamples=50, gallery_per_outcome=2, augment_examples=2, augment_draws=3)
    r = evaluate_checkpoint(
        trained["model"],
        trained["card"],
        test=(d["test"][0], d["test"][1], [f"x{i}" for i in range(30)]),
        cfg=cfg,
        device="cpu",
    )
    assert len(r.test_probs) == 30 and r.report["n"] == 30
    assert r.threshold == pytest.approx(r.report["at_val_threshold"]["threshold"])
    assert set(r.tables) == {"predictions", "confusion", "roc", "pr", "calibration"}
    assert len(r.tables["confusion"]) == 30
    flat = r.flat_metrics()
    assert {
        "test_accuracy",
        "test_accuracy_ci_low",
        "test_roc_auc_ci_high",
        "test_at_0.5_sensitivity",
        "test_threshold",
    } <= set(flat)
    assert len(flat) <= 25 and "test_brier_ci_low" not in flat  # a short, meaningful list in the MLflow UI
    figs = evaluation_figures(
        r,
        trained["model"],
        trained["card"],
        test_images=d["test"][0],
        val_images=d["val"][0],
        cfg=cfg,
    )
    # no training curves: the stage draws them from --history (the per-epoch CSV)
    assert {"confusion", "roc", "pr", "calibration", "augmentation", "gallery"} == set(figs)
    assert "Grad-CAM" in figs["gallery"]._suptitle.get_text()
    assert figs["augmentation"].axes[0].get_title() == "Original"


def test_evaluate_stage_writes_every_output(trained, tmp_path, monkeypatch):
    root = trained["root"]
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"evaluate": {"n_resamples": 40, "gallery_per_outcome": 2}, "mlflow": {"experiment": "t"}})
    )
    # An unreachable tracking server: the stage must warn and carry on (no-op tracker).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    stage = load_stage("evaluate")
    out = tmp_path / "out"
    argv = [
        "--params",
        str(params),
        "--model",
        "cnn",
        "--checkpoint",
        str(root / "models" / "cnn"),
        "--cache",
        str(trained["cache"]),
        "--history",
        str(root / "history.csv"),
        "--predictions",
        str(out / "eval/cnn/predictions.csv"),
        "--metrics",
        str(out / "metrics/eval/cnn.json"),
        "--plots",
        str(out / "plots/eval/cnn"),
        "--figures",
        str(out / "figures/eval/cnn"),
        "--device",
        "cpu",
    ]
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert stage.main(argv) == 0

    pred = pd.read_csv(out / "eval/cnn/predictions.csv")
    assert list(pred.columns) == ["path", "label", "probability", "predicted"] and len(pred) == 30
    assert set(pred["label"]) <= set(CLASSES) and pred["probability"].between(0, 1).all()
    conf = pd.read_csv(out / "plots/eval/cnn/confusion.csv")
    assert list(conf.columns) == ["actual", "predicted"] and len(conf) == 30
    assert (conf["actual"] == pred["label"]).all() and (conf["predicted"] == pred["predicted"]).all()
    assert list(pd.read_csv(out / "plots/eval/cnn/roc.csv").columns) == ["fpr", "tpr", "threshold"]
    assert list(pd.read_csv(out / "plots/eval/cnn/pr.csv").columns) == ["recall", "precision", "threshold"]
    assert list(pd.read_csv(out / "plots/eval/cnn/calibration.csv").columns) == [
        "mean_predicted",
        "fraction_positive",
        "count",
    ]
    m = json.loads((out / "metrics/eval/cnn.json").read_text())
    assert m["threshold"] == pytest.approx(trained["card"].threshold, abs=1e-6)  # the card's, chosen at training
    assert m["at_default_threshold"]["threshold"] == 0.5 and m["n_resamples"] == 40
    acc = m["at_val_threshold"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert acc["value"] == pytest.approx((pred["label"] == pred["predicted"]).mean())
    card = trained["card"]
    cal = m["calibration"]
    assert cal["temperature"] == card.temperature != 1.0
    assert cal["calibrated"]["ece"] == pytest.approx(m["at_val_threshold"]["ece"]["value"])
    assert set(cal["uncalibrated"]) == {"brier", "ece"} and cal["uncalibrated"] != cal["calibrated"]
    refer = m["refer"]
    assert (refer["low"], refer["high"]) == card.refer_band and refer["target_error"] == 0.1
    assert refer["n_decided"] + refer["n_refer"] == 30
    cov = refer["coverage"]
    assert cov["ci_low"] <= cov["value"] <= cov["ci_high"] and cov["value"] == refer["n_decided"] / 30
    pngs = {p.name for p in (out / "figures/eval/cnn").glob("*.png")}
    names = ("confusion", "roc", "pr", "calibration", "refer", "augmentation", "gallery", "curves")
    assert pngs == {f"{n}.png" for n in names}  # curves: --history's, drawn here (train draws no figure)


def test_external_sets_are_scored_at_the_cards_threshold(trained, tmp_path, monkeypatch):
    root = trained["root"]
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"evaluate": {"n_resamples": 40, "gradcam": False}, "mlflow": {"experiment": "t"}})
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    ext = tmp_path / "external"
    write_cache(ext / "shifted", {"test": toy(26, 7)})
    (ext / "index.json").write_text(json.dumps({"shifted": {"total": 26}}))
    out = tmp_path / "out"

    def argv(external):
        return [
            *("--params", str(params), "--model", "cnn", "--checkpoint", str(root / "models" / "cnn")),
            *("--cache", str(trained["cache"]), "--predictions", str(out / "pred.csv")),
            *("--metrics", str(out / "m.json"), "--plots", str(out / "plots"), "--figures", str(out / "fig")),
            *("--external", str(external), "--external-predictions", str(out / "external.csv"), "--device", "cpu"),
        ]

    stage = load_stage("evaluate")
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert stage.main(argv(ext)) == 0
    m = json.loads((out / "m.json").read_text())
    e = m["external"]["shifted"]
    assert e["n"] == 26 and e["threshold"] == m["threshold"] == pytest.approx(trained["card"].threshold, abs=1e-6)
    pred = pd.read_csv(out / "external.csv")
    assert len(pred) == 26 and set(pred["set"]) == {"shifted"}
    expected = (pred["probability"] >= m["threshold"]).map({True: "PNEUMONIA", False: "NORMAL"})
    assert (pred["predicted"] == expected).all()
    assert e["at_val_threshold"]["accuracy"]["value"] == pytest.approx((pred["label"] == pred["predicted"]).mean())
    roc = pd.read_csv(out / "plots" / "roc_external.csv")
    assert list(roc.columns) == ["set", "fpr", "tpr", "threshold"] and set(roc["set"]) == {"shifted"}
    assert (out / "fig" / "roc_external.png").read_bytes()[:4] == b"\x89PNG"

    # A set decoded at another size than the model's cache: refused, with the fix.
    write_cache(ext / "shifted", {"test": toy(26, 7, size=24)})
    with pytest.raises(FileNotFoundError, match=r"decoded at 24 px, the model at 20 px: run `dvc repro external`"):
        stage.main(argv(ext))


class _Scored:
    """What log_evaluation reads of an EvalResult: its flat metrics."""

    def __init__(self, auc: float):
        self.auc = auc

    def flat_metrics(self, prefix: str = "test_") -> dict[str, float]:
        m = {"threshold": 0.4, "roc_auc": self.auc, "roc_auc_ci_low": self.auc - 0.05, "balanced_accuracy": 0.8}
        m |= {"sensitivity": 0.9, "specificity": 0.7, "at_0.5_accuracy": 0.75}
        return {f"{prefix}{k}": v for k, v in m.items()}


def test_evaluation_charts_a_few_values_and_tables_the_rest(tmp_path):
    """The evaluation run's metrics tab: four headline values per set, not every CI; the rest in one table;
    the test split and the external sets as dataset inputs with their data versions."""
    from mlflow import MlflowClient

    from cxr.tracking import MlflowTracker

    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "index.json").write_text(json.dumps({"site_b": {"total": 9, "data_version": "abc123"}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker("eval-log", uri)
    with tracker.start_run("cnn evaluate"):
        scored, external = _Scored(0.9), {"site_b": _Scored(0.8)}
        load_stage("evaluate").log_evaluation(tracker, scored, external, "data/cache", str(tmp_path / "ext"), "v9")
        run_id = tracker.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    headline = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity")
    assert set(run.data.metrics) == {f"{s}_{k}" for s in ("test", "site_b") for k in headline}
    assert run.data.metrics["site_b_roc_auc"] == pytest.approx(0.8)
    local = client.download_artifacts(run_id, "eval/metrics_table.json", str(tmp_path))
    table = json.loads(open(local).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 2 * 7 and {r["set"] for r in rows} == {"test", "site_b"}
    assert any(r["metric"] == "roc_auc_ci_low" and r["value"] == pytest.approx(0.85) for r in rows)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"test", "site_b"}
    assert (inputs["test"].dataset.digest, inputs["site_b"].dataset.digest) == ("v9", "abc123")
    assert json.loads(inputs["test"].dataset.source) == {"uri": "data/cache/test_images.npy"}
    contexts = {n: {t.value for t in i.tags if t.key == "mlflow.data.context"} for n, i in inputs.items()}
    assert contexts == {"test": {"testing"}, "site_b": {"external"}}


def test_the_evaluation_is_a_run_nested_under_the_training_run(trained, tmp_path, monkeypatch):
    """The training run keeps its curves and final values; evaluate's numbers and figures go into a run of
    their own, which the UI shows under it (mlflow.parentRunId)."""
    from mlflow import MlflowClient

    from cxr.tracking import PARENT_RUN_TAG, MlflowTracker
    from cxr.training.run_config import flat_params

    root, card = trained["root"], trained["card"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = MlflowTracker("t", uri)
    # trained by `dvc exp run -n lr-bs`, then applied (`dvc exp apply lr-bs`) and evaluated by `dvc repro`
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = {"model": "cnn", "stage": "train", "data_version": card.data_version, "dvc_exp_name": "lr-bs"}
    with tracker.start_run("cnn [lr-bs]", tags=tags):
        tracker.log_params(flat_params(card.train_params))  # as train logs them
        tracker.log_metrics({"val_auc": 0.7}, step=1)
        train_id = tracker.run_id
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({"evaluate": {"n_resamples": 20, "gradcam": False}, "mlflow": {"experiment": "t"}})
    )
    out = tmp_path / "out"
    argv = [
        *("--params", str(params), "--model", "cnn", "--checkpoint", str(root / "models" / "cnn")),
        *("--cache", str(trained["cache"]), "--predictions", str(out / "pred.csv"), "--device", "cpu"),
        *("--metrics", str(out / "m.json"), "--plots", str(out / "plots"), "--figures", str(out / "fig")),
    ]
    assert load_stage("evaluate").main(argv) == 0
    client = MlflowClient(tracking_uri=uri)
    # The training run gains the four headline test values (the runs table: params beside test results), no more
    headline = {f"test_{k}" for k in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity")}
    trained = client.get_run(train_id)
    assert set(trained.data.metrics) == {"epoch/val_auc"} | headline and trained.info.status == "FINISHED"
    (run,) = client.search_runs([tracker.experiment_id], "tags.stage = 'evaluate'")
    assert run.data.tags[PARENT_RUN_TAG] == train_id and run.data.tags["model"] == "cnn"
    # named after the experiment whose checkpoint it evaluates, not after the commit it ran at
    assert run.info.status == "FINISHED" and run.info.run_name == "cnn evaluate [lr-bs]"
    assert run.data.tags["dvc_exp_name"] == "lr-bs"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(
        json.loads((out / "m.json").read_text())["at_val_threshold"]["roc_auc"]["value"]
    )
    assert trained.data.metrics["test_roc_auc"] == run.data.metrics["test_roc_auc"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/confusion.png", "eval/roc.png", "eval/m.json", "eval/metrics_table.json"} <= artifacts


def test_a_tuned_candidate_is_scored_and_drawn_under_its_own_name_and_colour(trained):
    """The sweep's kept model holds a cnn card; evaluate_tuned@cnn-tuned names it cnn-tuned in its report and
    every figure, in cnn-tuned's colour (the one the comparison figures and DVC plots give it), not cnn's."""
    from matplotlib.colors import to_hex

    from cxr.plots import model_color

    d = trained["data"]
    cfg = EvaluateConfig(n_resamples=20, gallery_per_outcome=1)
    test = (d["test"][0], d["test"][1], [f"x{i}" for i in range(30)])
    r = evaluate_checkpoint(trained["model"], trained["card"], test=test, cfg=cfg, device="cpu", name="cnn-tuned")
    assert r.report["model"] == r.model == "cnn-tuned" and trained["card"].name == "cnn"
    # Grad-CAM finds the layer of the card's architecture (cnn-tuned is no registry name)
    figs = evaluation_figures(r, trained["model"], trained["card"], test_images=d["test"][0], cfg=cfg)
    assert "Grad-CAM" in figs["gallery"]._suptitle.get_text()
    titles = {k: (f._suptitle.get_text() if f._suptitle else f.axes[0].get_title()) for k, f in figs.items()}
    assert all(t.startswith("cnn-tuned") for t in titles.values()), titles
    colours = {to_hex(line.get_color()) for line in figs["roc"].axes[0].get_lines()}
    assert model_color("cnn-tuned") in colours and model_color("cnn") not in colours
