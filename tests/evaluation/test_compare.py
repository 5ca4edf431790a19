"""compare on fabricated metrics files: ranked and selected by validation, never by test; MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr.evaluation import compare as C
from cxr.evaluation import report as R
from cxr.metrics import CI_METRICS
from pipeline_repo import load_stage
from toydata import cells


def fake_eval(test_auc: float, acc: float, n: int = 624) -> dict:
    block = {"threshold": 0.5, "tp": 1, "fp": 1, "tn": 1, "fn": 1}
    for k in CI_METRICS:
        v = test_auc if k == "roc_auc" else acc
        block[k] = {"value": v, "ci_low": v - 0.03, "ci_high": min(v + 0.03, 1.0)}
    return {
        "model": "x",
        "threshold": 0.42,
        "threshold_method": "youden",
        "n": n,
        "n_normal": 234,
        "n_pneumonia": 390,
        "confidence": 0.95,
        "n_resamples": 1000,
        "at_val_threshold": block,
        "at_default_threshold": block,
    }


# cnn is best on validation; vit is best on test. Selection must follow validation.
TRAIN = {
    "cnn": {"val_auc": 0.95, "val_loss": 0.30},
    "vit": {"val_auc": 0.90, "val_loss": 0.20},
    "vgg16": {"val_auc": None, "val_loss": 0.9},
}
EVAL = {"cnn": fake_eval(0.80, 0.75), "vit": fake_eval(0.99, 0.93), "vgg16": fake_eval(0.50, 0.625)}


def test_select_best_uses_validation_and_never_nan():
    assert C.select_best(TRAIN, "val_auc") == "cnn"
    assert C.select_best(TRAIN, "val_loss") == "vit"
    assert C.select_best({"a": {"val_auc": float("nan")}, "b": {"val_auc": 0.6}}) == "b"
    with pytest.raises(ValueError, match="NaN"):
        C.select_best({"a": {"val_auc": None}})
    with pytest.raises(ValueError, match="dvc repro train"):
        C.select_best({})


def test_select_best_breaks_a_validation_auc_tie_on_loss():
    tied = {"a": {"val_auc": 1.0, "val_loss": 0.20}, "b": {"val_auc": 1.0, "val_loss": 0.05}}
    assert C.select_best(tied, "val_auc") == "b"  # not the first of the tie
    assert C.select_best({**tied, "c": {"val_auc": 0.99, "val_loss": 0.01}}, "val_auc") == "b"
    loss_tied = {"a": {"val_auc": 0.7, "val_loss": 0.1}, "b": {"val_auc": 0.9, "val_loss": 0.1}}
    assert C.select_best(loss_tied, "val_loss") == "b"
    assert C.select_best({"a": {"val_auc": 1.0}, "b": {"val_auc": 1.0}}) == "a"  # no loss to break it


def test_results_table_ranked_by_validation_not_test():
    t = C.results_table(EVAL, TRAIN)
    assert t["model"].tolist() == ["cnn", "vit", "vgg16"]  # by val AUC; NaN last
    assert t["selected"].tolist() == [True, False, False]
    assert t.loc[0, "roc_auc"] == 0.80 and t.loc[1, "roc_auc"] == 0.99
    assert {
        "accuracy_ci_low",
        "accuracy_ci_high",
        "sensitivity",
        "specificity",
        "balanced_accuracy",
        "f1",
        "threshold",
        "val_auc",
    } <= set(t.columns)


def test_results_markdown_reads_like_a_results_section():
    t = C.results_table(EVAL, TRAIN)
    sweep_table = pd.DataFrame(
        {
            "batch_size": [16, 32],
            "lr": [1e-3, 1e-4],
            "val_auc": [0.9, 0.8],
            "val_loss": [0.3, 0.4],
            "val_balanced_accuracy": [0.85, 0.75],
            "val_sensitivity": [0.9, 0.7],
            "val_specificity": [0.8, 0.8],
            "selected": [True, False],
        }
    )
    sweep = {"model": "resnet50", "select_metric": "val_auc", "best": {"batch_size": 16, "lr": 1e-3, "val_auc": 0.9}}
    md = cells(R.results_markdown(t, eval_metrics=EVAL, sweep_summary=sweep, sweep_table=sweep_table))
    assert md.startswith("# Results")
    assert "62.5 %" in md  # the always-PNEUMONIA baseline
    assert "| **cnn** |" in md and "75.0 (72.0–78.0)" in md
    assert "selected on validation ROC-AUC is **cnn**" in md
    assert "highest *test* ROC-AUC belongs to vit" in md
    sweep_md = md[md.index("## Batch size x learning rate sweep") :]
    assert "| batch_size | lr | val_auc | val_loss | val_bacc | val_sens | val_spec | selected |" in sweep_md
    assert "| 16 | 0.001 | 0.900 | 0.300 | 0.850 | 0.900 | 0.800 | **yes** |" in sweep_md
    assert "never sees the test split" in sweep_md and "`evaluate_tuned@resnet50-tuned`" in sweep_md
    # A validation tie decided by the stated rule is not reported as a selection on the metric.
    tied = cells(R.results_markdown(t, eval_metrics=EVAL, tie=True))
    assert "The selected model is **cnn**, decided by the tie rule below" in tied
    assert "selected on validation ROC-AUC is" not in tied and "accuracy 75.0 (72.0–78.0) %" in tied


def test_the_sweep_section_shows_no_test_column_even_from_an_old_table():
    """A plots/sweep.csv written before the sweep stopped scoring the test split: its test columns stay out."""
    old = pd.DataFrame(
        {"batch_size": [16], "lr": [1e-3], "val_auc": [0.9], "test_roc_auc": [0.7], "test_accuracy": [0.6]}
    )
    md = R.sweep_markdown(old, "val_auc")
    assert "test" not in md and "0.700" not in md and "0.900" in md


def test_bar_table_and_roc_curves():
    bars = C.bar_table(EVAL, ["accuracy", "roc_auc"])
    assert bars["vit"]["roc_auc"] == pytest.approx((0.99, 0.96, 1.0))
    curves = C.roc_curves({"cnn": pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})}, EVAL)
    assert curves["cnn"][2] == 0.80


def _write_inputs(root: Path, models=("cnn", "vit", "vgg16")) -> None:
    for m in models:
        (root / "metrics/train").mkdir(parents=True, exist_ok=True)
        (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
        (root / f"plots/eval/{m}").mkdir(parents=True, exist_ok=True)
        (root / f"metrics/train/{m}.json").write_text(json.dumps(TRAIN[m]))
        (root / f"metrics/eval/{m}.json").write_text(json.dumps(EVAL[m]))
        pd.DataFrame({"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1], "threshold": [1, 0.5, 0]}).to_csv(
            root / f"plots/eval/{m}/roc.csv", index=False
        )
    (root / "metrics/sweep.json").write_text(
        json.dumps({"model": "cnn", "select_metric": "val_auc", "best": {"batch_size": 8, "lr": 0.001, "val_auc": 0.9}})
    )
    pd.DataFrame(
        {
            "batch_size": [8],
            "lr": [0.001],
            "val_auc": [0.9],
            "val_loss": [0.3],
            "val_balanced_accuracy": [0.8],
            "selected": [True],
        }
    ).to_csv(root / "plots/sweep.csv", index=False)


def _stage():
    return load_stage("compare")


def _argv(root: Path, params: Path, models=("cnn", "vit", "vgg16")) -> list[str]:
    return [
        "--params",
        str(params),
        "--models",
        *models,
        "--train-metrics",
        str(root / "metrics/train"),
        "--eval-metrics",
        str(root / "metrics/eval"),
        "--roc",
        str(root / "plots/eval"),
        "--sweep",
        str(root / "metrics/sweep.json"),
        "--sweep-table",
        str(root / "plots/sweep.csv"),
        "--checkpoints",
        str(root / "models"),
        "--report",
        str(root / "reports/results.md"),
        "--csv",
        str(root / "reports/results.csv"),
        "--figures",
        str(root / "figures/compare"),
        "--headline",
        str(root / "metrics/headline.json"),
    ]


def test_compare_stage_without_mlflow(tmp_path, monkeypatch):
    _write_inputs(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"compare": {"register": False}, "mlflow": {"experiment": "t"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # unreachable: degrade, don't fail
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert _stage().main(_argv(tmp_path, params)) == 0
    csv = pd.read_csv(tmp_path / "reports/results.csv")
    assert csv["model"].tolist() == ["cnn", "vit", "vgg16"] and csv["selected"].tolist() == [True, False, False]
    assert "# Results" in (tmp_path / "reports/results.md").read_text()
    head = json.loads((tmp_path / "metrics/headline.json").read_text())
    assert list(head) == ["val_auc", "auc", "acc", "bacc", "sens", "spec", "thr"]  # the order `dvc exp show` lists
    assert head["val_auc"] == {"cnn": 0.95, "vit": 0.9, "vgg16": None} and head["auc"]["vit"] == 0.99
    assert head["thr"]["cnn"] == 0.42 and head["acc"]["cnn"] == 0.75
    for name in ("metrics_bar.png", "roc_all.png"):
        assert (tmp_path / "figures/compare" / name).read_bytes()[:4] == b"\x89PNG"


def _inputs_with_tuned(tmp_path, monkeypatch, tuned_train: dict) -> Path:
    """_write_inputs plus the sweep's kept cnn-tuned (its validation metrics ``tuned_train``); MLflow
    unreachable, no registration: the params file."""
    _write_inputs(tmp_path)
    (tmp_path / "metrics/train/cnn-tuned.json").write_text(json.dumps(tuned_train))
    (tmp_path / "metrics/eval/cnn-tuned.json").write_text(json.dumps(fake_eval(0.82, 0.77)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"compare": {"register": False}, "mlflow": {"experiment": "t"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    return params


def test_the_sweeps_kept_model_is_a_candidate(tmp_path, monkeypatch):
    """metrics/sweep.json names the sweep's model: its kept "<model>-tuned" is compared and can win."""
    params = _inputs_with_tuned(tmp_path, monkeypatch, {"val_auc": 0.97, "val_loss": 0.25})
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert _stage().main(_argv(tmp_path, params)) == 0  # --models cnn vit vgg16: the tuned one is added
    csv = pd.read_csv(tmp_path / "reports/results.csv")
    assert set(csv["model"]) == {"cnn", "vit", "vgg16", "cnn-tuned"}
    assert csv.loc[csv["selected"], "model"].tolist() == ["cnn-tuned"]  # validation AUC 0.97 > cnn's 0.95
    assert "cnn-tuned" in (tmp_path / "reports/results.md").read_text()


def test_registration_asked_for_and_impossible_fails_the_stage(tmp_path, monkeypatch):
    """With compare.register true, MLflow down must not end in a cached success with a stale registry."""
    from cxr.evaluation.promotion import RegistryError

    _write_inputs(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"compare": {}, "mlflow": {"experiment": "t"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match="unreachable"), pytest.raises(RegistryError, match="register=false"):
        _stage().main(_argv(tmp_path, params))


@pytest.mark.parametrize(
    "champion,candidate,promoted,why",
    [
        (None, {"data_version": "a", "value": 0.8}, True, "no champion"),
        ({"data_version": "a", "value": 0.905}, {"data_version": "a", "value": 0.886}, False, "does not beat"),
        ({"data_version": "a", "value": 0.886}, {"data_version": "a", "value": 0.905}, True, "beats"),
        ({"data_version": "a", "value": 0.5}, {"data_version": "b", "value": 0.9}, False, "not comparable"),
    ],
)
def test_champion_moves_only_to_a_better_model_on_the_same_data(champion, candidate, promoted, why):
    from cxr.evaluation.promotion import decide

    ok, reason = decide(candidate, champion, "val_auc")
    assert ok is promoted and why in reason
    assert decide({"data_version": "b", "value": 0.1}, {"data_version": "a", "value": 0.9}, "val_auc", "always")[0]
    assert decide({"data_version": "a", "value": 0.3}, {"data_version": "a", "value": 0.4}, "val_loss")[0]


def test_registers_the_validation_winner_from_its_training_run(tmp_path, monkeypatch):
    """Training runs logged as src/train.py does; compare registers cnn (val) and not vit (test)."""
    import torch

    from cxr import checkpoint
    from cxr.models import build_model
    from cxr.tracking import MlflowTracker
    from cxr.training.run_config import resolve_run_config
    from toydata import card_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tracker = MlflowTracker("cmp", uri)
    run_ids = {}
    for m in ("cnn", "vit"):
        cfg = resolve_run_config({"image_size": 16}, m)
        torch.manual_seed(0)
        model = build_model("cnn", image_size=16)  # the architecture does not matter to the registry
        card = card_for(model, std=(0.25,) * 3, train_params=cfg.model_dump(mode="json"), data_version="v1")
        checkpoint.save(tmp_path / "models" / m, model, card)
        with tracker.start_run(m, tags={"model": m, "stage": "train", "data_version": "v1"}):
            tracker.log_params(cfg.as_params())
            if m == "cnn":
                tracker.log_model(model, name="model", image_size=16)
            run_ids[m] = tracker.run_id

    import dataclasses

    from cxr.tracking.runs import find_training_run

    card = checkpoint.load_card(tmp_path / "models/cnn")
    assert find_training_run(tracker, card).run_id == run_ids["cnn"]
    other = dataclasses.replace(card, train_params={**card.train_params, "lr": 0.5})
    assert find_training_run(tracker, other) is None  # params differ: not this checkpoint's run

    _write_inputs(tmp_path, models=("cnn", "vit"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"compare": {}, "mlflow": {"experiment": "cmp", "registered_model": "cxr-test"}}))
    assert _stage().main(_argv(tmp_path, params, models=("cnn", "vit"))) == 0

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    v = client.get_model_version_by_alias("cxr-test", "champion")
    assert v.tags["model"] == "cnn" and float(v.tags["val_auc"]) == pytest.approx(0.95)
    assert v.tags["data_version"] == "v1"
    # The version's source is the pyfunc model logged into the winner's training run, which shows it.
    assert v.run_id == run_ids["cnn"] and v.tags["training_run_id"] == run_ids["cnn"]
    assert client.get_run(run_ids["cnn"]).data.tags["registered_model"] == f"cxr-test/{v.version}"
    assert "data version v1" in v.description and "ROC-AUC 0.800 (0.770-0.830)" in v.description
    assert "threshold" in v.description
    # The registered model says what it is; the version's source model is named after the architecture.
    assert "Pediatric chest X-ray classifier" in client.get_registered_model("cxr-test").description
    assert client.get_logged_model(v.source.removeprefix("models:/")).name == "cnn-pyfunc"
    compare_run = [r for r in client.search_runs([tracker.experiment_id]) if r.data.tags.get("stage") == "compare"][0]
    import base64
    import io

    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buf, format="PNG")
    served = mlflow.pyfunc.load_model("models:/cxr-test@champion")
    out = served.predict(pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()]}))
    assert list(out["label"]) in (["NORMAL"], ["PNEUMONIA"]) and 0 <= float(out["probability"][0]) <= 1
    # `cxr predict --model models:/...@champion` fetches the same checkpoint from the store.
    from cxr.serving import cli

    (tmp_path / "x.png").write_bytes(buf.getvalue())
    assert (
        cli.main(
            [
                "predict",
                str(tmp_path / "x.png"),
                "--model",
                "models:/cxr-test@champion",
                "--format",
                "csv",
                "--no-progress",
                "--output",
                str(tmp_path / "pred.csv"),
            ]
        )
        == 0
    )
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert float(pred["probability"][0]) == pytest.approx(float(out["probability"][0]), abs=1e-6)
    assert compare_run.data.tags["selected_model"] == "cnn" and compare_run.data.tags["promoted"] == "true"
    assert compare_run.data.tags["registered_model"] == f"cxr-test/{v.version}"
    assert set(compare_run.data.metrics) == {"selected_val_auc"}  # models' metrics live in their own runs

    # The same checkpoint again: the same version, not a copy of it.
    assert _stage().main(_argv(tmp_path, params, models=("cnn", "vit"))) == 0
    assert [str(x.version) for x in client.search_model_versions("name = 'cxr-test'")] == [str(v.version)]

    # A worse experiment (same data, another cnn) registers a candidate but leaves @champion where it was.
    torch.manual_seed(1)
    model = build_model("cnn", image_size=16)
    checkpoint.save(tmp_path / "models" / "cnn", model, dataclasses.replace(card, val_auc=0.90))
    worse = {**TRAIN, "cnn": {"val_auc": 0.90, "val_loss": 0.3}, "vit": {"val_auc": 0.85, "val_loss": 0.3}}
    for m in ("cnn", "vit"):
        (tmp_path / f"metrics/train/{m}.json").write_text(json.dumps(worse[m]))
    assert _stage().main(_argv(tmp_path, params, models=("cnn", "vit"))) == 0
    versions = client.search_model_versions("name = 'cxr-test'")
    assert len(versions) == 2
    assert client.get_model_version_by_alias("cxr-test", "champion").version == v.version


def test_external_sets_get_a_table_with_the_gap_a_headline_column_and_a_figure(tmp_path, monkeypatch):
    _write_inputs(tmp_path)
    for m, ext_auc in (("cnn", 0.70), ("vit", 0.95), ("vgg16", 0.52)):
        rep = json.loads((tmp_path / f"metrics/eval/{m}.json").read_text())
        rep["external"] = {"kermany_a": {**fake_eval(ext_auc, 0.66, n=324), "n_normal": 114, "n_pneumonia": 210}}
        (tmp_path / f"metrics/eval/{m}.json").write_text(json.dumps(rep))
        pd.DataFrame({"set": "kermany_a", "fpr": [0, 0.4, 1], "tpr": [0, 0.6, 1], "threshold": [1, 0.5, 0]}).to_csv(
            tmp_path / f"plots/eval/{m}/roc_external.csv", index=False
        )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"compare": {"register": False}, "mlflow": {"experiment": "t"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert _stage().main(_argv(tmp_path, params)) == 0
    head = json.loads((tmp_path / "metrics/headline.json").read_text())
    assert head["ext"]["kermany_a"]["auc"] == {"cnn": 0.7, "vit": 0.95, "vgg16": 0.52}
    assert head["ext"]["kermany_a"]["acc"]["cnn"] == 0.66
    md = cells((tmp_path / "reports/results.md").read_text())
    assert "## External validation: kermany_a" in md and "324 images (114 NORMAL, 210 PNEUMONIA)" in md
    # cnn: internal 0.800, external 0.700 (0.670-0.730), gap -0.100; the sweep table is renumbered after it.
    assert "| **cnn** | 0.420 | 0.800 | 0.700 (0.670–0.730) | -0.100 |" in md
    assert "**Table 3.** " in md
    csv = pd.read_csv(tmp_path / "reports/results.csv")
    assert csv.loc[csv["model"] == "vit", "kermany_a_roc_auc"].item() == 0.95
    png = tmp_path / "figures/compare/roc_external.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    panels = C.shift_panels(
        {"cnn": pd.read_csv(tmp_path / "plots/eval/cnn/roc.csv")},
        {"cnn": pd.read_csv(tmp_path / "plots/eval/cnn/roc_external.csv")},
        {"cnn": json.loads((tmp_path / "metrics/eval/cnn.json").read_text())},
    )
    threshold, curves = panels["cnn"]
    assert threshold == 0.42 and list(curves) == ["internal test (n=624)", "kermany_a (n=324)"]
    assert curves["kermany_a (n=324)"][3] == pytest.approx((1 - 0.66, 0.66))  # the operating point: (1 - spec, sens)


def test_a_checkpoint_with_builder_options_finds_its_training_run(tmp_path):
    """models.<name>.options is logged as JSON; the card's dict must compare equal to it (evaluate
    logged vgg16_bn's test metrics into a new run before)."""

    from cxr import checkpoint
    from cxr.models import build_model
    from cxr.tracking import MlflowTracker
    from cxr.tracking.runs import find_training_run
    from cxr.training.run_config import resolve_run_config
    from toydata import card_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker("opts", uri)
    cfg = resolve_run_config({"image_size": 32, "models": {"vgg16": {"options": {"batch_norm": True}}}}, "vgg16")
    assert cfg.as_params()["options"] == '{"batch_norm": true}'
    model = build_model("cnn", image_size=16)
    card = card_for(model, std=(0.25,) * 3, train_params=cfg.model_dump(mode="json"), data_version="v1")
    checkpoint.save(tmp_path / "models" / "vgg16", model, card)
    # the card is named after the architecture saved (a small cnn stands in for VGG16's weights)
    with tracker.start_run("vgg16", tags={"model": "cnn", "stage": "train", "data_version": "v1"}):
        tracker.log_params(cfg.as_params())
        run_id = tracker.run_id
    card = checkpoint.load_card(tmp_path / "models" / "vgg16")
    assert card.train_params["options"] == {"batch_norm": True}
    assert find_training_run(tracker, card).run_id == run_id


def test_a_tuned_checkpoint_finds_its_sweep_configuration_run(tmp_path):
    """``<model>-tuned`` was trained by one configuration of the sweep (a nested run tagged stage=sweep):
    that run is its training run; a train stage's run with the same params comes first."""
    from cxr import checkpoint
    from cxr.models import build_model
    from cxr.tracking import MlflowTracker
    from cxr.tracking.runs import find_training_run
    from cxr.training.run_config import resolve_run_config
    from toydata import card_for

    tracker = MlflowTracker("tuned", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = build_model("cnn", image_size=16)
    ids = {}
    for lr in (0.1, 0.01):
        cfg = resolve_run_config({"image_size": 16, "lr": lr}, "cnn")
        with tracker.start_run(f"sweep cnn lr={lr}", tags={"model": "cnn", "stage": "sweep"}):
            tracker.log_params(cfg.as_params())
            ids[lr] = tracker.run_id
    card = card_for(model, train_params=cfg.model_dump(mode="json"), data_version="v1")
    checkpoint.save(tmp_path / "models" / "cnn-tuned", model, card)
    card = checkpoint.load_card(tmp_path / "models" / "cnn-tuned")
    assert find_training_run(tracker, card).run_id == ids[0.01]
    with tracker.start_run("cnn", tags={"model": "cnn", "stage": "train", "data_version": "v1"}):
        tracker.log_params(cfg.as_params())
        train_id = tracker.run_id
    assert find_training_run(tracker, card).run_id == train_id


def _write_predictions(root: Path, models=("cnn", "vit", "vgg16"), external: bool = False) -> None:
    """evaluate's per-image files under root/eval: vit as good as cnn, vgg16 much worse (the same noise:
    correlated models)."""
    from toydata import write_predictions

    rng = np.random.default_rng(0)
    y = (rng.random(150) < 0.6).astype(int)
    noise = rng.normal(size=150)
    paths = [f"test/{'PNEUMONIA' if c else 'NORMAL'}/img{i}.jpeg" for i, c in enumerate(y)]
    for m, strength in (("cnn", 3.0), ("vit", 2.9), ("vgg16", 0.6)):
        if m in models:
            p = 1 / (1 + np.exp(-(noise + rng.normal(scale=0.3, size=150) + strength * y)))
            sets = {"test": (paths, y, p)}
            if external:
                sets["kermany_a"] = (paths[:90], y[:90], p[:90])
            write_predictions(root / "eval", m, sets)


def test_compare_stage_reports_every_model_paired_with_the_selected_one(tmp_path, monkeypatch):
    _write_inputs(tmp_path)
    _write_predictions(tmp_path, models=("cnn", "vgg16"))  # vit skipped: no predictions
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"compare": {"register": False}, "mlflow": {"experiment": "t"}, "evaluate": {"n_resamples": 200}}
        )
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    argv = [*_argv(tmp_path, params), "--predictions", str(tmp_path / "eval"), "--paired", str(tmp_path / "p.json")]
    with pytest.warns(RuntimeWarning, match="unreachable"), pytest.warns(RuntimeWarning, match="no paired .* vit"):
        assert _stage().main(argv) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["selected"] == "cnn" and report["n_resamples"] == 200 and report["seed"] == 0
    (row,) = report["comparisons"]
    assert (
        row["model"] == "vgg16" and row["set"] == "internal test" and row["verdict"] == "worse" and row["ci_high"] < 0
    )
    assert report["not_compared"] == {"vit": "no predictions of vit"}
    md = cells((tmp_path / "reports/results.md").read_text())
    assert "## Paired comparison with the selected model" in md
    assert "**Table 2.** Each model against the selected model **cnn**" in md  # after Table 1 (no external set)
    assert "**Table 3.** cnn: every configuration" in md  # the sweep moves one on
    assert "| vgg16 | internal test | 150 |" in md and "worse than cnn (CI below 0)" in md
    assert "**cnn** is better than vgg16 (the CI lies below 0)." in md and "Not compared: vit" in md
    assert md.index("## Paired comparison") < md.index("## Batch size x learning rate sweep")


def test_paired_comparisons_follow_the_external_tables_and_refuse_other_images(tmp_path, monkeypatch):
    """The README and docs copy Tables 1 and 2 by number: the paired table comes after the external sets."""
    from cxr.evaluation.paired import PairingError

    _write_inputs(tmp_path)
    for m in ("cnn", "vit", "vgg16"):
        rep = json.loads((tmp_path / f"metrics/eval/{m}.json").read_text())
        rep["external"] = {"kermany_a": {**fake_eval(0.8, 0.7, n=90), "n_normal": 30, "n_pneumonia": 60}}
        (tmp_path / f"metrics/eval/{m}.json").write_text(json.dumps(rep))
    _write_predictions(tmp_path, external=True)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"compare": {"register": False}, "mlflow": {"experiment": "t"}, "evaluate": {"n_resamples": 100}}
        )
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    argv = [*_argv(tmp_path, params), "--predictions", str(tmp_path / "eval")]
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert _stage().main(argv) == 0
    md = cells((tmp_path / "reports/results.md").read_text())
    assert "**Table 2.** kermany_a:" in md and "**Table 3.** Each model against" in md and "**Table 4.** cnn:" in md
    assert md.index("## External validation: kermany_a") < md.index("## Paired comparison")
    assert "| vit | internal test | 150 |" in md and "| vgg16 | kermany_a | 90 |" in md
    assert "On the external set kermany_a (90 images, cnn ROC-AUC " in md
    assert "), **cnn** is not distinguishable from vit (the 95 % CI of the difference includes 0); it is better" in md
    # vgg16 scored on other images (a stale evaluate): the stage stops with the fix
    pred = tmp_path / "eval/vgg16/predictions.csv"
    pred.write_text(pred.read_text().replace("img3.jpeg", "img3-other.jpeg"))
    with pytest.raises(PairingError, match="do not hold the same images.*img3-other.jpeg"):
        _stage().main(argv)


def test_the_selected_model_comes_first_and_a_synthetic_run_says_so(tmp_path, monkeypatch):
    """A tie on validation ROC-AUC broken on loss (as in the default run): the selected cnn-tuned still heads
    the tables, and a report on the synthetic demo data says so at its top, before any number."""
    from cxr.checkpoint import DataSource

    params = _inputs_with_tuned(tmp_path, monkeypatch, {"val_auc": 0.95, "val_loss": 0.1})
    stage = _stage()
    seen = []

    class Card:
        data_source = DataSource("synthetic", None, {"seed": 0, "patients": 240})

    monkeypatch.setattr(stage, "load_card", lambda folder: seen.append(Path(folder).name) or Card())
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert stage.main(_argv(tmp_path, params)) == 0
    csv = pd.read_csv(tmp_path / "reports/results.csv")
    assert csv["model"].tolist() == ["cnn-tuned", "cnn", "vit", "vgg16"]  # cnn ties it on val_auc: it follows
    head = json.loads((tmp_path / "metrics/headline.json").read_text())  # `dvc exp show`'s columns: the list's order
    assert list(head["val_auc"]) == ["cnn", "vit", "vgg16", "cnn-tuned"]
    md = cells((tmp_path / "reports/results.md").read_text())
    assert seen == ["cnn-tuned"]  # the selected model's card says what the data was
    intro = md[: md.index("**Table 1.**")]
    assert "**Synthetic data.**" in intro and "synthetic demo data (generator seed 0, 240 patients)" in intro
    assert md.index("| **cnn-tuned** |") < md.index("| cnn |")

    monkeypatch.setattr(stage, "load_card", lambda folder: type("C", (), {"data_source": DataSource("folder", "x")}))
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert stage.main(_argv(tmp_path, params)) == 0
    assert "Synthetic data" not in (tmp_path / "reports/results.md").read_text()  # real data: no such sentence
