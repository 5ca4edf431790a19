"""`make real`: the real-data configuration as one command (configs/real.yaml through dvc exp run).

The end-to-end run uses a few hundred real images copied from ../shared/data into tmp_path (the
official train split's and half the official test split's), the cpu recipe and tiny sizes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
from collections import Counter

import pytest
import yaml

from pipeline_repo import BIN, assert_changed_only_by, env, make_repo, shipped_files
from toydata import cells


def load_real(repo_root):
    spec = importlib.util.spec_from_file_location("real_driver", repo_root / "src" / "real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(d: dict, prefix="") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + ".")
    return out


def test_every_override_exists_in_params_and_recipes_differ(repo_root):
    real = load_real(repo_root)
    config = yaml.safe_load((repo_root / "configs/real.yaml").read_text())
    known = _keys(yaml.safe_load((repo_root / "params.yaml").read_text()))
    for recipe in ("gpu", "cpu"):
        args = real.overrides(config, recipe, "/data/x.zip")
        pairs = dict(a.split("=", 1) for a in args[1::2])
        assert set(pairs) <= known, set(pairs) - known  # `dvc exp run -S` refuses keys params.yaml lacks
        assert pairs["data.source"] == "path" and pairs["data.path"] == "/data/x.zip"
    gpu = dict(a.split("=", 1) for a in real.overrides(config, "gpu", "/d")[1::2])
    cpu = dict(a.split("=", 1) for a in real.overrides(config, "cpu", "/d")[1::2])
    assert gpu["train.pretrained"] == "true" and gpu["image_size"] == "224" and gpu["preprocess.cache_size"] == "256"
    assert cpu["train.pretrained"] == "false" and cpu["image_size"] == "96" and cpu["models.cnn.epochs"] == "15"
    assert cpu["models.resnet_small.epochs"] == "20" and cpu["evaluate.threshold"] == "midpoint"


def _comments(text: str) -> list[str]:
    return [line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line]


def _at(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("recipe", ["gpu", "cpu"])
@pytest.mark.parametrize("external", [[], ["/data/kermany224-external-a", "b=/x/y.zip"]], ids=["no-external", "two"])
def test_every_override_real_builds_leaves_the_shipped_params_valid(repo_root, tmp_path, recipe, external, monkeypatch):
    """Each kind of override real.py hands to `dvc exp run` (set, set to null, a list, remove a key, add one),
    applied to the shipped params.yaml by DVC's own writer: the file still parses, passes the `params` stage's
    check, holds every new value and keeps every comment. (Removing external.sets' only key once left `{}` at
    column 1 under a commented `sets:` line: `make real` without EXTERNAL died in 1.5 s.)"""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.syspath_prepend(str(repo_root / "src"))  # as `python src/real.py` has it
    real = load_real(repo_root)
    check = _check_params(repo_root)
    shipped = (repo_root / "params.yaml").read_text()
    config = yaml.safe_load((repo_root / "configs/real.yaml").read_text())
    current = yaml.safe_load(shipped)["external"]["sets"]
    args = real.overrides(config, recipe, "/data/x.zip") + real.external_overrides(external, current)
    sets = args[1::2]
    trial = tmp_path / "params.yaml"
    trial.write_text(shipped)
    apply_overrides(trial, sets)
    text = trial.read_text()
    after = yaml.safe_load(text)  # raises on the old layout
    assert check(after) == [], check(after)
    assert _comments(text) == _comments(shipped)
    for s in sets:
        key, _, value = s.lstrip("+").partition("=")
        if key.startswith("~"):
            assert key[1:].rsplit(".", 1)[1] not in _at(after, key[1:].rsplit(".", 1)[0])
        else:
            assert _at(after, key) == yaml.safe_load(value), s
    assert real.preflight(repo_root / "params.yaml", args) is None  # what `make real` checks before running


def test_dvc_rewrites_the_shipped_params_only_where_an_override_sets(repo_root, tmp_path):
    """params.yaml is laid out as DVC's writer lays it out: `dvc exp run -S lr=...` changes that line and no
    other, so `git diff params.yaml` after an experiment shows just what it set."""
    from dvc.utils.hydra import apply_overrides

    shipped = (repo_root / "params.yaml").read_text()
    trial = tmp_path / "params.yaml"
    trial.write_text(shipped)
    apply_overrides(trial, ["seed=42"])  # the shipped value: nothing may change
    assert trial.read_text() == shipped
    apply_overrides(trial, ["lr=0.0001"])
    before, after = shipped.splitlines(), trial.read_text().splitlines()
    assert len(after) == len(before)
    assert [(a, b) for a, b in zip(before, after) if a != b] == [("lr: 0.001", "lr: 0.0001")]


def _check_params(repo_root):
    spec = importlib.util.spec_from_file_location("check_params_stage", repo_root / "src" / "check_params.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check


def test_make_real_refuses_overrides_that_would_break_params_before_running(repo_root, tmp_path, monkeypatch):
    """The preflight tries the overrides on a scratch copy: a layout DVC's writer breaks, an unknown key and an
    invalid value each get one line, and the file itself is never touched."""
    monkeypatch.syspath_prepend(str(repo_root / "src"))
    real = load_real(repo_root)
    broken = tmp_path / "params.yaml"
    layout = "external:\n  sets:   # a comment here is what breaks it\n    s: synthetic\n"
    broken.write_text(layout)
    problem = real.preflight(broken, ["-S", "~external.sets.s"])
    assert problem and "invalid YAML" in problem and "was not changed" in problem, problem
    assert broken.read_text() == layout
    assert "Could not override 'nosuch'" in real.preflight(repo_root / "params.yaml", ["-S", "nosuch=1"])
    assert "lr must be a finite number" in real.preflight(repo_root / "params.yaml", ["-S", "lr=-1"])


def test_a_model_left_out_takes_the_recipes_settings_for_it_along(repo_root, tmp_path, monkeypatch):
    """`make real REAL_ARGS="-S ~models.vgg16"`: the recipe's models.vgg16.* go with the model (DVC cannot set
    models.vgg16.epochs in a params.yaml without vgg16), in this run and the next, whose params.yaml already lacks
    it (removing it again would be refused too)."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.syspath_prepend(str(repo_root / "src"))
    real = load_real(repo_root)
    config = yaml.safe_load((repo_root / "configs/real.yaml").read_text())
    shipped = yaml.safe_load((repo_root / "params.yaml").read_text())
    extra = ["-S", "~models.vgg16", "-S", "epochs=1", "params"]
    recipe = real.overrides(config, "cpu", "/data/x")
    assert "models.vgg16.epochs=1" in recipe
    kept, user = real.applicable(recipe, extra, shipped)
    assert user == extra
    assert kept[1::2] == [v for v in recipe[1::2] if not v.startswith("models.vgg16.")]
    trial = tmp_path / "params.yaml"
    trial.write_text((repo_root / "params.yaml").read_text())
    assert real.preflight(trial, kept + user) is None
    apply_overrides(trial, (kept + user)[1:-1:2])  # what that run leaves in the workspace
    after = yaml.safe_load(trial.read_text())
    assert "vgg16" not in after["models"] and after["models"]["resnet50"]["epochs"] == 1
    # the next `make real`, with or without the removal: valid, and the same file
    for again in (extra, ["-S", "epochs=1"]):
        kept2, user2 = real.applicable(recipe, again, after)
        assert "~models.vgg16" not in user2 and not [v for v in kept2 if v.startswith("models.vgg16.")]
        assert real.preflight(trial, kept2 + user2) is None, again


def test_make_real_without_data_says_what_to_pass(repo_root):
    p = subprocess.run(
        ["make", "--no-print-directory", "real"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "DATA": ""},
    )
    assert p.returncode != 0
    assert "make real DATA=/path/to/chest-xray-pneumonia.zip" in p.stderr + p.stdout


def _copy_sample(shared, dest, n_train=50, n_test=20, seed=0):
    rng = random.Random(seed)
    for src_root, split, n in (
        (shared / "kermany224", "train", n_train),
        (shared / "kermany224-external-a", "test", n_test),
    ):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((src_root / split / cls).iterdir())
            (dest / split / cls).mkdir(parents=True)
            for f in rng.sample(files, n):
                shutil.copyfile(f, dest / split / cls / f.name)  # copies: the shared folder stays untouched
    # An external set: other images of the official test half (none of those copied above, and none of the
    # 8 that repeat another's bytes: its twin may be in the copy, and the external stage would refuse it).
    taken = {f.name for f in (dest / "test").rglob("*.jpeg")}
    half = shared / "kermany224-external-a"
    digests = Counter(hashlib.sha256(f.read_bytes()).hexdigest() for f in half.rglob("*.jpeg"))
    for cls in ("NORMAL", "PNEUMONIA"):
        files = [
            f
            for f in sorted((half / "test" / cls).iterdir())
            if f.name not in taken and digests[hashlib.sha256(f.read_bytes()).hexdigest()] == 1
        ]
        (dest.parent / "ext_a" / cls).mkdir(parents=True)
        for f in rng.sample(files, 12):
            shutil.copyfile(f, dest.parent / "ext_a" / cls / f.name)
    # A repeat within the official test split, as the real one has six: it must be kept.
    first = min((dest / "test" / "PNEUMONIA").iterdir())
    shutil.copyfile(first, dest / "test" / "PNEUMONIA" / "person9999_bacteria_1.jpeg")


# Tiny sizes, and the cpu recipe's two models that learn (cnn, resnet_small, and the sweep's resnet_small-tuned):
# the three reference models leave the list as a user drops a model from a quick trial, `-S '~models.vgg16'`.
# Each of them costs about a minute a run here; the synthetic end-to-end runs (tests/test_workflows.py) train
# all five through every stage.
DROPPED = ("resnet50", "vgg16", "vit")
TINY = (
    "-S epochs=1 -S batch_size=16 -S image_size=32 -S preprocess.cache_size=40 -S preprocess.workers=1 "
    "-S models.cnn.epochs=1 -S models.resnet_small.epochs=1 -S sweep.batch_sizes=[16] "
    "-S sweep.lrs=[0.001] -S sweep.image_size=32 -S evaluate.n_resamples=100 -S mlflow.log_model=false "
    + " ".join(f"-S ~models.{m}" for m in DROPPED)
)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_make_real_runs_end_to_end_on_real_images(tmp_path, shared_data):
    data = tmp_path / "chest_xray"
    _copy_sample(shared_data, data)
    repo = make_repo(tmp_path / "repo")  # the shipped params.yaml and configs/real.yaml, byte for byte
    assert "configs/real.yaml" in shipped_files()
    (repo / ".venv").symlink_to(BIN.parent)  # the venv running the tests; -o: never reinstall it
    e = env()
    e["PYTHONPATH"] = str(repo / "src")

    def make_real(*extra, target=""):
        cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "real", f"DATA={data}", *extra]
        cmd += ["RECIPE=cpu", f"REAL_ARGS={TINY} {target}".strip()]
        p = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True, check=False, timeout=1800)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-6000:]
        ran = re.search(r"running:\n  dvc exp run (.*)\n", out).group(1).split()
        applied.extend(a for a in ran if a != target)
        assert_changed_only_by(repo, applied)  # params.yaml: the shipped file with every -S so far, as DVC writes
        return out

    applied: list[str] = []

    # Without EXTERNAL: params.yaml's synthetic set is dropped (no real-data model is scored on drawings). DVC
    # writes params.yaml with every override and the `params` stage checks it (removing external.sets' only key
    # once left the file unparsable: the run died in 1.5 s); a stage target keeps this run to that.
    out = make_real(target="params")
    assert "-S ~external.sets.synthetic_shift" in out and "Running stage 'params'" in out
    assert yaml.safe_load((repo / "params.yaml").read_text())["external"]["sets"] == {}
    assert "| Model |" not in out  # compare did not run: no stale tables printed as this run's

    # With EXTERNAL: the whole pipeline.
    out = make_real(f"EXTERNAL=set_a={tmp_path / 'ext_a'}")
    assert "[real] recipe cpu (configs/real.yaml)" in out and "-S image_size=96" in out
    assert "wall time per stage" in out and "train@cnn" in out and "compare" in out
    table = cells(out)  # the printed tables, their column padding collapsed
    assert "reports/results.md" in out and "| Model |" in table
    assert "-S ++external.sets.set_a=" in out and "synthetic" not in (repo / "reports/results.md").read_text()
    assert "## External validation: set_a" in out and "| ROC-AUC set_a |" in table
    ext = json.loads((repo / "metrics/external.json").read_text())
    assert list(ext) == ["set_a"] and ext["set_a"]["images"] == {"NORMAL": 12, "PNEUMONIA": 12, "total": 24}
    head = json.loads((repo / "metrics/headline.json").read_text())
    # the models left in the list, and the sweep's kept resnet_small-tuned (the cpu recipe sweeps resnet_small)
    assert set(head["ext"]["set_a"]["auc"]) == {"cnn", "resnet_small", "resnet_small-tuned"}
    assert not any(f"train@{m}" in out for m in DROPPED) and not (repo / "models/vgg16").exists()
    for m in ("cnn", "resnet_small"):  # what roc_external.png draws
        assert "synthetic" not in (repo / f"plots/eval/{m}/roc_external.csv").read_text()

    metrics = json.loads((repo / "metrics/data.json").read_text())
    assert metrics["images"]["test"]["total"] == 2 * 20 + 1  # the official test split, whole
    assert metrics["duplicates_within_test_kept"] == 1
    assert json.loads((repo / "models/pretrained/manifest.json").read_text())["models"] == {}
    shown = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--json"],
        cwd=repo,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    exps = [x for rev in json.loads(shown.stdout) for x in (rev.get("experiments") or [])]
    assert exps, "make real left no experiment in dvc exp show"
    params = exps[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    # the cpu recipe's values that TINY does not override, and TINY's own on top (a dropped model's entry, which
    # the recipe had set, is gone)
    assert params["sweep"]["model"] == "resnet_small" and params["train"]["scheduler"] == "cosine"
    assert params["image_size"] == 32 and params["train"]["pretrained"] is False
    assert sorted(params["models"]) == ["cnn", "resnet_small"]


def test_external_sets_replace_the_default_ones(repo_root):
    real = load_real(repo_root)
    args = real.external_overrides(["/data/kermany224-external-a", "b=/x/y.zip"], {"synthetic_shift": "synthetic"})
    assert args[1::2] == [
        "~external.sets.synthetic_shift",
        "++external.sets.kermany224_external_a=/data/kermany224-external-a",
        "++external.sets.b=/x/y.zip",
    ]
    # Without EXTERNAL a real-data run keeps folder sets and drops synthetic ones (issue: real models
    # were scored on drawings and read as an external failure).
    assert real.external_overrides([], {"synthetic_shift": "synthetic"}) == ["-S", "~external.sets.synthetic_shift"]
    assert real.external_overrides([], {"a": "/data/a", "s": "Synthetic"}) == ["-S", "~external.sets.s"]
    assert real.external_overrides(["/d/2024-set"], {})[1].startswith("++external.sets.set_2024_set=")
