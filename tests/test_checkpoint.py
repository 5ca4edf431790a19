"""Checkpoint round trip: state_dict + JSON rebuilds the same model, predictions identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr import checkpoint
from cxr.engine import predict
from cxr.models import build_model

TINY_VIT = {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64, "patch_size": 8}}


@pytest.mark.parametrize("name,options", [("cnn", {}), ("vit", TINY_VIT)])
def test_round_trip_identical_predictions(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(name, image_size=32, **options).eval()
    meta = {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 32, "threshold": 0.42, "classes": ["NORMAL", "PNEUMONIA"]}
    checkpoint.save(tmp_path / "m", model, meta)
    loaded, meta2 = checkpoint.load(tmp_path / "m")
    assert meta2["arch"] == model.arch and meta2["threshold"] == 0.42
    assert "torch" in meta2["library_versions"]
    assert not {"git_commit", "mlflow_run_id"} & set(meta2)  # a DVC output: nothing that changes run to run
    # plain JSON, no pickles
    json.loads((tmp_path / "m" / "model.json").read_text())
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 40)).astype(np.uint8)
    kw = dict(mean=meta2["mean"], std=meta2["std"], image_size=meta2["image_size"], device="cpu")
    np.testing.assert_array_equal(predict(model, images, **kw), predict(loaded, images, **kw))


def test_weights_file_is_a_plain_state_dict(tmp_path):
    model = build_model("cnn")
    checkpoint.save(tmp_path, model, {"arch": model.arch})
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_load_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        checkpoint.load(tmp_path / "nothing")
