"""The params stage's resolved settings: a model's file changes exactly when what decides its checkpoint does.

train@<model> depends on resolved/train/<model>.json instead of params.yaml's keys (dvc.yaml), so these bytes
are what DVC compares: a global knob the model overrides, the MLflow names and resume_every must leave them be.
"""

from __future__ import annotations

import copy
import json

import pytest

from cxr.config import load_params
from pipeline_repo import REPO_ROOT, load_stage


@pytest.fixture(scope="module")
def shipped() -> dict:
    return load_params(REPO_ROOT / "params.yaml")


def resolved(params: dict, tmp_path) -> dict[str, bytes]:
    """What the params stage writes for ``params``: relative path -> bytes."""
    out = tmp_path / "resolved"
    load_stage("check_params").write_resolved(params, out)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.json"))}


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def with_(params: dict, **settings) -> dict:
    """A copy of ``params`` with dotted keys set (``**{"models.vgg16.lr": 0.01}``)."""
    p = copy.deepcopy(params)
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = p
        for key in parents:
            node = node[key]
        node[leaf] = value
    return p


def test_one_file_per_model_of_the_list_and_one_for_the_weights(shipped, tmp_path):
    files = resolved(shipped, tmp_path / "a")
    assert set(files) == {f"train/{m}.json" for m in shipped["models"]} | {"weights.json"}
    vgg16 = json.loads(files["train/vgg16.json"])
    assert vgg16["run"]["lr"] == shipped["models"]["vgg16"]["lr"] != shipped["lr"]  # its override, resolved
    assert json.loads(files["weights.json"]) == {"pretrained": {}}  # the synthetic default pretrains nothing


@pytest.mark.parametrize(
    "settings,expected",
    [
        # vgg16 pins lr and batch_size, vit its lr: the global values reach the others only
        (
            {"lr": 1e-4, "batch_size": 16},
            {"train/cnn.json", "train/resnet_small.json", "train/resnet50.json", "train/vit.json"},
        ),
        ({"mlflow.experiment": "renamed", "mlflow.log_model": True}, set()),  # where runs are logged
        ({"train.resume_every": 5}, set()),  # how often a resume state is written
        ({"compare.select_metric": "val_loss", "evaluate.n_resamples": 10}, set()),  # later stages' settings
        ({"models.vgg16.lr": 0.01}, {"train/vgg16.json"}),
        (
            {"evaluate.threshold": "midpoint"},
            {f"train/{m}.json" for m in ("cnn", "resnet_small", "resnet50", "vgg16", "vit")},
        ),
        ({"models.vit.pretrained": True}, {"train/vit.json", "weights.json"}),
    ],
)
def test_a_models_file_changes_only_with_what_decides_its_checkpoint(shipped, tmp_path, settings, expected):
    before = resolved(shipped, tmp_path / "before")
    after = resolved(with_(shipped, **settings), tmp_path / "after")
    assert changed(before, after) == expected


def test_a_model_off_the_list_loses_its_file(shipped, tmp_path):
    out = tmp_path / "same"
    resolved(shipped, out)
    fewer = copy.deepcopy(shipped)
    del fewer["models"]["vit"]
    assert "train/vit.json" not in resolved(fewer, out)
