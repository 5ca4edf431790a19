"""cxr.evaluation.promotion.describe: what a registered version's description tells a person about the model."""

from __future__ import annotations

import pytest

from cxr.checkpoint import DataSource
from cxr.data.config import DataConfig
from cxr.evaluation.promotion import describe
from cxr.models import build_model
from toydata import card_for

METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
REPORT = {"n": 40, "at_val_threshold": {k: {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9} for k in METRICS}}


@pytest.mark.parametrize(
    "source,says",
    [
        (
            DataSource.from_config(DataConfig()),
            "cnn trained on the synthetic demo data (generator seed 0, 240 patients)",
        ),
        (
            DataSource("archive", "/data/chest-xray-pneumonia.zip"),
            "cnn trained on the archive /data/chest-xray-pneumonia.zip",
        ),
        (DataSource(), "cnn trained on data this model card does not record"),
    ],
)
def test_the_description_names_the_training_data(source, says):
    card = card_for(build_model("cnn", image_size=16), data_version="v1", data_source=source)
    text = describe("cnn", card, REPORT, "val_auc", 0.9)
    first = text.splitlines()[0]
    assert first.startswith(says) and "data version v1" in first
    assert ("mean nothing" in first) == source.synthetic  # the demo model says it is no diagnostic tool
    assert "ROC-AUC 0.800 (0.700-0.900)" in text


def test_a_tuned_candidate_is_described_by_its_name_and_architecture():
    card = card_for(build_model("cnn", image_size=16), data_version="v1")
    assert describe("cnn-tuned", card, REPORT, "val_auc", 0.9).startswith("cnn-tuned (cnn) trained on ")
