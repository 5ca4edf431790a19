"""compare's choice on validation (cxr.evaluation.selection): a tie validation cannot break is said, and decided by
the documented preference, never by the last decimal of a saturated ROC-AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr import CLASSES
from cxr.evaluation.compare import results_table
from cxr.evaluation.selection import PREFERENCE, read_validation, select_candidate, selection_markdown


def _write(folder, model, y, p):
    d = folder / model
    d.mkdir(parents=True)
    paths = [f"val/{i}.png" for i in range(len(y))]
    pd.DataFrame({"path": paths, "label": [CLASSES[v] for v in y], "probability": p}).to_csv(
        d / "validation.csv", index=False
    )


@pytest.fixture
def validation(tmp_path):
    """The default run's split (19 NORMAL, 43 PNEUMONIA): two candidates that separate it perfectly, one that
    does not."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(19, int), np.ones(43, int)]
    perfect = np.r_[rng.uniform(0.0, 0.3, 19), rng.uniform(0.6, 1.0, 43)]
    also = np.r_[rng.uniform(0.0, 0.4, 19), rng.uniform(0.5, 1.0, 43)]
    weak = np.r_[rng.uniform(0.0, 0.7, 19), rng.uniform(0.3, 1.0, 43)]
    for m, p in (("resnet_small-tuned", perfect), ("cnn", also), ("vit", weak)):
        _write(tmp_path, m, y, p)
    return tmp_path


TRAIN = {  # metrics/train/<m>.json: the tuned candidate leads on the exact tie (lower loss)
    "resnet_small-tuned": {"val_auc": 1.0, "val_loss": 0.03},
    "cnn": {"val_auc": 1.0, "val_loss": 0.05},
    "vit": {"val_auc": 0.80, "val_loss": 0.40},
}


def test_a_tie_validation_cannot_break_goes_to_the_fully_trained_model(validation):
    val = read_validation(validation, list(TRAIN))
    sel = select_candidate(TRAIN, "val_auc", val, n_configs={"resnet_small-tuned": 9}, n_resamples=200)
    assert sel.leader == "resnet_small-tuned" and sel.selected == "cnn" and sel.rule == "tie preference"
    assert list(sel.tied) == ["cnn"] and sel.tied["cnn"]["ci_low"] <= 0 <= sel.tied["cnn"]["ci_high"]
    assert sel.n_val == 62 and "vit" not in sel.tied  # its difference's interval lies below 0
    text = "\n".join(selection_markdown(sel))
    assert "validation cannot tell it apart from cnn" in text and PREFERENCE in text and "**cnn**" in text
    assert "best of the sweep's 9 configurations" in text and "sets it behind the fully trained models" in text
    table = results_table(
        {m: _report() for m in TRAIN}, TRAIN, "val_auc", selected=sel.selected
    )  # the report lists the selected model first
    assert table["model"].tolist()[0] == "cnn" and table["selected"].tolist() == [True, False, False]


def test_without_validation_predictions_or_a_tie_the_metric_decides(validation):
    assert select_candidate(TRAIN, "val_auc").selected == "resnet_small-tuned"  # nothing to test a tie on
    clear = {"cnn": {"val_auc": 1.0, "val_loss": 0.05}, "vit": {"val_auc": 0.8, "val_loss": 0.4}}
    sel = select_candidate(clear, "val_auc", read_validation(validation, list(clear)), n_resamples=200)
    assert (sel.selected, sel.tied, sel.rule) == ("cnn", {}, "val_auc")
    assert selection_markdown(sel) == []


def _report() -> dict:
    ci = {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0}
    keys = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc", "f1", "pr_auc", "precision")
    return {"n": 10, "threshold": 0.5, "at_val_threshold": {k: dict(ci) for k in keys}}
