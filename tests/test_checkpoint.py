"""Checkpoint round trip: state_dict + JSON rebuilds the same model, predictions identical."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cxr import checkpoint
from cxr.models import build_model
from cxr.training.engine import predict_probabilities
from cxr.training.run_config import resolve_data_source
from toydata import TINY_VIT, card_for


@pytest.mark.parametrize("name,options", [("cnn", {}), ("vit", TINY_VIT)])
def test_round_trip_identical_predictions(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(name, image_size=32, **options).eval()
    checkpoint.save(tmp_path / "m", model, card_for(model, threshold=0.42))
    loaded, meta2 = checkpoint.load(tmp_path / "m")
    assert meta2.arch == model.arch and meta2.threshold == 0.42
    assert "torch" in meta2.library_versions
    assert not {"git_commit", "mlflow_run_id", "device"} & set(json.loads((tmp_path / "m" / "model.json").read_text()))
    # plain JSON, no pickles
    json.loads((tmp_path / "m" / "model.json").read_text())
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 40)).astype(np.uint8)
    kw = dict(mean=meta2.mean, std=meta2.std, image_size=meta2.image_size, device="cpu")
    np.testing.assert_array_equal(
        predict_probabilities(model, images, **kw), predict_probabilities(loaded, images, **kw)
    )


def test_weights_file_is_a_plain_state_dict(tmp_path):
    model = build_model("cnn")
    checkpoint.save(tmp_path, model, card_for(model))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_load_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        checkpoint.load(tmp_path / "nothing")


V1_CARD = {  # a model.json as the first releases wrote it (format_version 1)
    "format_version": 1,
    "arch": {"name": "cnn", "image_size": 16, "options": {}},
    "model": "cnn",
    "image_size": 16,
    "cache_size": 20,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "channels": 3,
    "resize": "bilinear, antialiased, to image_size x image_size",
    "classes": ["NORMAL", "PNEUMONIA"],
    "positive_class": "PNEUMONIA",
    "threshold": 0.42,
    "threshold_method": "youden on validation",
    "train_params": {
        "model": "cnn",
        "lr": 0.001,
        "aug_enabled": True,
        "aug_crop_scale_min": 0.7,
        "aug_crop_scale_max": 1.0,
        "aug_brightness": 0.3,
    },
    "data_version": "dv1",
    "best_epoch": 2,
    "val_auc": 0.9,
    "val_loss": 0.4,
    "val_acc": 0.8,
    "epochs_run": 3,
    "stopped_early": False,
    "device": "cpu",
    "mlflow_run_id": "abc",
    "git_commit": "123",
    "library_versions": {"torch": "2.0"},
}


def test_format_1_is_upgraded_in_one_place():
    card = checkpoint.ModelCard.from_json(json.dumps(V1_CARD))
    assert card.format_version == checkpoint.FORMAT_VERSION and card.name == "cnn"
    assert card.threshold_method == "youden" and card.threshold == 0.42
    assert card.cache_resize == "stretch"  # prose in v1's "resize": the preprocess default
    assert checkpoint.ModelCard.from_json({**V1_CARD, "cache_resize": "pad"}).cache_resize == "pad"
    aug = card.augment_config()
    assert aug.crop_scale == (0.7, 1.0) and aug.brightness == 0.3
    # and the upgraded card writes the current format, which reads back equal
    assert checkpoint.ModelCard.from_json(card.to_json()) == card


def test_format_2_is_upgraded_to_one_nested_augment():
    """v2 kept the augmentation twice: flat aug_* keys in train_params and an `augment` mapping."""
    v2 = {
        **V1_CARD,
        "format_version": 2,
        "threshold_method": "youden",
        "cache_resize": "stretch",
        "augment": {"enabled": True, "crop_scale": [0.75, 1.0], "gamma": [0.8, 1.2]},
    }
    card = checkpoint.ModelCard.from_json(v2)
    assert card.format_version == checkpoint.FORMAT_VERSION == 6
    assert not any(k.startswith("aug_") for k in card.train_params) and card.train_params["lr"] == 0.001
    assert card.train_params["augment"]["gamma"] == [0.8, 1.2]
    aug = card.augment_config()
    assert aug.crop_scale == (0.75, 1.0) and aug.gamma == (0.8, 1.2)  # the mapping v2 trained with
    assert checkpoint.ModelCard.from_json(card.to_json()) == card


def test_card_round_trip_keeps_the_data_source(tmp_path):
    model = build_model("cnn", image_size=16)
    source = checkpoint.DataSource("folder", "../shared/data/kermany224")
    checkpoint.save(tmp_path / "m", model, card_for(model, data_source=source))
    written = json.loads((tmp_path / "m" / "model.json").read_text())
    assert written["format_version"] == 6
    assert written["data_source"] == {"kind": "folder", "location": "../shared/data/kermany224", "settings": {}}
    card = checkpoint.load_card(tmp_path / "m")
    assert card.data_source == source and not card.data_source.synthetic
    assert checkpoint.ModelCard.from_json(card.to_json()) == card
    assert card_for(model).data_source.kind == "unknown"  # a card built without one says so


def test_format_3_is_upgraded_to_an_unknown_source_never_a_guess():
    """v3 recorded a data version but not what the data was: v4 says unknown, even for the synthetic-looking."""
    v3 = {
        **{k: v for k, v in V1_CARD.items() if k not in ("model", "channels", "resize", "positive_class")},
        "format_version": 3,
        "threshold_method": "youden",
        "cache_resize": "stretch",
        "train_params": {"lr": 0.001, "augment": {"enabled": True}},
        "data_version": "synthetic-looking",
    }
    card = checkpoint.ModelCard.from_json(json.dumps(v3))
    assert card.format_version == 6
    assert card.data_source == checkpoint.DataSource("unknown", None, {}) and not card.data_source.synthetic
    assert "does not record" in card.data_source.describe()
    assert json.loads(card.to_json())["data_source"]["kind"] == "unknown"
    assert checkpoint.ModelCard.from_json(card.to_json()) == card


def test_format_4_is_upgraded_to_no_temperature_and_no_refer_band():
    """A v4 card predates calibration and the refer band: T = 1 (the probabilities as the model gave them)
    and every image decided, so an old model answers exactly as before."""
    v4 = {
        **{k: v for k, v in V1_CARD.items() if k not in ("model", "channels", "resize", "positive_class")},
        "format_version": 4,
        "threshold": 0.4,
        "threshold_method": "youden",
        "cache_resize": "stretch",
        "train_params": {"lr": 0.001, "augment": {"enabled": True}},
        "data_source": {"kind": "synthetic", "location": None, "settings": {"seed": 0}},
    }
    card = checkpoint.ModelCard.from_json(json.dumps(v4))
    assert card.format_version == 6 and card.temperature == 1.0 and card.refer_band is None
    assert card.calibration == {} and card.refer == {} and card.operating_points() == []
    p = np.array([0.0, 0.2, 0.4, 0.9999, 1.0])
    np.testing.assert_array_equal(card.calibrate(p), p)
    assert [card.label(v) for v in (0.39, 0.4)] == ["NORMAL", "PNEUMONIA"]
    assert checkpoint.ModelCard.from_json(card.to_json()) == card


def test_card_applies_its_temperature_and_answers_refer_inside_its_band(tmp_path):
    model = build_model("cnn", image_size=16)
    card = card_for(model, threshold=0.5)
    card = dataclasses.replace(card, temperature=2.0, refer_band=(0.3, 0.7), refer={"target_error": 0.05})
    checkpoint.save(tmp_path / "m", model, card)
    loaded = checkpoint.load_card(tmp_path / "m")
    assert (
        loaded.temperature == 2.0
        and loaded.refer_band == (0.3, 0.7)
        and loaded == dataclasses.replace(card, library_versions=loaded.library_versions)
    )
    # logit(0.8) / 2 -> sigmoid: sqrt(4) / (1 + sqrt(4)) = 2/3
    np.testing.assert_allclose(loaded.calibrate(np.array([0.8, 0.5])), [2 / 3, 0.5])
    labels = [loaded.label(v) for v in (0.29, 0.3, 0.5, 0.69, 0.7)]
    assert labels == ["NORMAL", "REFER", "REFER", "REFER", "PNEUMONIA"]


def test_card_answers_at_its_operating_points_and_says_why_one_has_no_threshold():
    """Format 6: the operating points chosen on validation (cxr.policy) travel with the model."""
    from cxr.config import OperatingTarget
    from cxr.policy import ValidationPolicy, operating_threshold

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40, int), np.ones(100, int)]  # 40 NORMAL: too few for a 95 % specificity at 95 % confidence
    p = np.r_[rng.random(40) * 0.6, 0.3 + 0.7 * rng.random(100)]
    targets = [OperatingTarget(metric="sensitivity", target=0.95), OperatingTarget(metric="specificity", target=0.95)]
    choices = ValidationPolicy(operating_points=targets, refer_target=0.05).decide(y, p)
    card = dataclasses.replace(card_for(build_model("cnn", image_size=16)), **choices.card_fields())
    card = checkpoint.ModelCard.from_json(card.to_json())  # as written and read back
    t = operating_threshold(card, "sensitivity-95")
    assert t == choices.operating_points[0].threshold and t < card.threshold
    with pytest.raises(ValueError, match="validation had 40 NORMAL images, a 95 % target needs at least 59"):
        operating_threshold(card, "specificity-95")
    with pytest.raises(ValueError, match="has: sensitivity-95, specificity-95"):
        operating_threshold(card, "sensitivity-90")
    assert card.refer_band is None and card.refer["status"] == "validation too small"
    assert card.validation["policy"]["refer_target"] == 0.05


def test_train_records_what_params_say_the_data_was(tmp_path, monkeypatch, params):
    """The train stage's record: a folder or an archive told apart on disk, the URL without its secrets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "xrays").mkdir()
    (tmp_path / "xrays.zip").write_bytes(b"PK")

    def source(**data):
        return resolve_data_source({**params, "data": {**params["data"], **data}})

    synthetic = source(source="synthetic")
    assert synthetic.kind == "synthetic" and synthetic.synthetic and synthetic.location is None
    assert synthetic.settings == params["data"]["synthetic"] and "seed 0" in synthetic.describe()
    assert source(source="path", path="xrays") == checkpoint.DataSource("folder", "xrays")  # as given
    assert source(source="path", path=str(tmp_path / "xrays.zip")).kind == "archive"
    gone = source(source="path", path="gone.zip")
    assert (
        gone.kind == "path"
        and gone.describe() == "data.path gone.zip (a folder or an archive, gone when the model was trained)"
    )
    url = source(source="url", url="https://me:pw@example.org:8443/d/cxr.zip?X-Amz-Signature=abc#x", sha256="ab" * 32)
    assert url == checkpoint.DataSource("url", "https://example.org:8443/d/cxr.zip", {"sha256": "ab" * 32})
    assert source(source="kaggle").location == "paultimothymooney/chest-xray-pneumonia"


def test_unreadable_cards_say_why():
    with pytest.raises(checkpoint.CheckpointError, match="newer than this code"):
        checkpoint.ModelCard.from_json({**V1_CARD, "format_version": 99})
    with pytest.raises(checkpoint.CheckpointError, match="lacks .*threshold"):
        checkpoint.ModelCard.from_json({k: v for k, v in V1_CARD.items() if k != "threshold"})
