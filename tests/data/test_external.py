"""Tests of cxr.data.external and src/external.py: intake, verification, decoding, refusal of the run's own pictures.

.venv/bin/pytest tests/data/test_external.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.cache import build_cache, load_split
from cxr.data.config import DataConfig, ExternalConfig, PreprocessConfig, SplitConfig, SyntheticConfig
from cxr.data.external import INDEX_FILE, OVERLAP_FILE, ExternalError, build_all, load_index
from cxr.data.layout import find_class_layout
from cxr.data.manifest import build_manifest, write_manifest
from cxr.data.patients import parse_patient_id
from cxr.data.sources import SourceError
from cxr.data.synthetic import generate
from pipeline_repo import run_stage_script

SPLIT = SplitConfig(workers=1)


def make_run(root: Path, raw: Path, cache_size: int = 48) -> tuple[Path, Path]:
    """A run's manifest and cache from the canonical tree ``raw``, built by the pipeline's own functions."""
    result = build_manifest(raw, SPLIT, progress=False)
    manifest = root / "manifest.csv"
    write_manifest(result.manifest, manifest)
    cache = root / "cache"
    build_cache(manifest, raw, cache, PreprocessConfig(cache_size=cache_size, workers=1), progress=False)
    return manifest, cache


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("run")
    raw = root / "raw"
    generate(raw, SyntheticConfig(patients=24, min_size=64, max_size=96, seed=0))
    manifest, cache = make_run(root, raw)
    return raw, manifest, cache


def external_cfg(**sets) -> ExternalConfig:
    return ExternalConfig(sets={k: str(v) for k, v in sets.items()})


def test_a_distinct_synthetic_cohort_is_taken_in_and_decoded(synthetic_run, tmp_path):
    _, manifest, cache = synthetic_run
    cfg = ExternalConfig(sets={"shifted": "synthetic"})
    metrics = build_all(cfg, DataConfig(), SPLIT, manifest, cache, tmp_path / "ext", progress=False)
    m = metrics["shifted"]
    assert m["images"]["total"] == m["images"]["NORMAL"] + m["images"]["PNEUMONIA"] > 0
    assert m["images"]["NORMAL"] > 0 and m["images"]["PNEUMONIA"] > 0
    assert m["checked_against"] == len(pd.read_csv(manifest))
    assert m["closest_similarity"] < cfg.max_similarity
    test = load_split(tmp_path / "ext" / "shifted", "test")
    assert len(test) == m["images"]["total"] and test.images.shape[1:] == (48, 48)  # the run's cache_size
    assert load_index(tmp_path / "ext")["shifted"]["total"] == len(test)
    # Deterministic: the same config gives the same decoded pixels.
    build_all(cfg, DataConfig(), SPLIT, manifest, cache, tmp_path / "again", progress=False)
    again = load_split(tmp_path / "again" / "shifted", "test")
    assert np.array_equal(np.asarray(again.images), np.asarray(test.images)) and again.paths == test.paths


def test_no_sets_writes_an_empty_index(synthetic_run, tmp_path):
    _, manifest, cache = synthetic_run
    assert build_all(ExternalConfig(), DataConfig(), SPLIT, manifest, cache, tmp_path / "ext", progress=False) == {}
    assert json.loads((tmp_path / "ext" / INDEX_FILE).read_text()) == {}


def test_a_synthetic_set_is_refused_for_a_real_data_run(synthetic_run, tmp_path):
    """Models of real radiographs are never scored on drawings: one line naming the set and the fix."""
    from cxr.config import ConfigError

    _, manifest, cache = synthetic_run
    cfg = ExternalConfig(sets={"synthetic_shift": "synthetic", "other": "synthetic"})
    with pytest.raises(ConfigError) as exc:
        build_all(
            cfg, DataConfig(source="path", path="/data/x"), SPLIT, manifest, cache, tmp_path / "x", progress=False
        )
    msg = str(exc.value)
    assert "synthetic_shift, other are synthetic" in msg and "data.source: path" in msg
    assert "-S '~external.sets.synthetic_shift' -S '~external.sets.other'" in msg and "\n" not in msg
    assert not (tmp_path / "x").exists()  # refused before anything is written


def _copy_as_jpeg(src: Path, dst: Path, scale: float, quality: int) -> None:
    with Image.open(src) as im:
        im = im.convert("L")
        im = im.resize((int(im.width * scale), int(im.height * scale)), Image.BICUBIC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, quality=quality)


def test_resized_copies_of_the_runs_pictures_are_refused_with_their_child(synthetic_run, tmp_path):
    raw, manifest, cache = synthetic_run
    man = pd.read_csv(manifest)
    train = man[man["split"] == "train"]
    # Two of the run's training pictures, resized and re-encoded, under new names; plus a second image
    # of the first child (the same person number, a new picture) and an unrelated cohort.
    copied = train.iloc[0], train[train["label"] != train.iloc[0]["label"]].iloc[0]
    ext = tmp_path / "set" / "test"
    generate(tmp_path / "other", SyntheticConfig(patients=8, min_size=64, max_size=96, seed=5))
    for label in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(tmp_path / "other" / "train" / label, ext / label, dirs_exist_ok=True)
    for row in copied:  # in a sub-folder: the file keeps its name, so its person number
        _copy_as_jpeg(raw / row["path"], ext / row["label"] / "copies" / Path(row["path"]).name, 1.7, 80)
    child = parse_patient_id(Path(copied[0]["path"]).name)
    sibling = (
        ext / copied[0]["label"] / f"{child}{'-0099' if child.startswith(('IM', 'NORMAL')) else '_virus_9999'}.jpeg"
    )
    shutil.copyfile(next((tmp_path / "other" / "train" / "NORMAL").iterdir()), sibling)

    with pytest.raises(ExternalError) as err:
        build_all(external_cfg(leaky=tmp_path / "set"), DataConfig(), SPLIT, manifest, cache, tmp_path / "ext")
    msg = str(err.value)
    assert "external set 'leaky'" in msg and "train image" in msg and "cannot be in an external set" in msg
    report = pd.read_csv(tmp_path / "ext" / "leaky" / OVERLAP_FILE)
    near = report[report["reason"] == "near_duplicate"]
    assert sorted(near["match_path"]) == sorted(r["path"] for r in copied)
    assert (near["similarity"] >= 0.995).all() and set(near["match_split"]) == {"train"}
    same_child = report[report["reason"] == "same_child_as_a_match"]
    assert list(same_child["path"]) == [f"test/{copied[0]['label']}/{sibling.name}"]
    assert not (tmp_path / "ext" / INDEX_FILE).exists()  # no usable index: evaluate cannot run on it


def test_the_same_bytes_are_refused_even_below_the_similarity_bar(synthetic_run, tmp_path):
    raw, manifest, cache = synthetic_run
    man = pd.read_csv(manifest)
    ext = tmp_path / "set"
    for label in ("NORMAL", "PNEUMONIA"):
        row = man[(man["label"] == label) & (man["split"] == "test")].iloc[0]
        (ext / label).mkdir(parents=True)
        shutil.copyfile(raw / row["path"], ext / label / "renamed.jpeg")
    cfg = ExternalConfig(sets={"copy": str(ext)}, max_similarity=1.0)
    with pytest.raises(ExternalError, match=r"\(test\).*same bytes"):
        build_all(cfg, DataConfig(), SPLIT, manifest, cache, tmp_path / "ext")


def test_links_are_not_followed_and_a_missing_class_is_refused(synthetic_run, tmp_path):
    raw, manifest, cache = synthetic_run
    ext = tmp_path / "set"
    (ext / "NORMAL").mkdir(parents=True)
    (ext / "PNEUMONIA").mkdir()
    generate(tmp_path / "other", SyntheticConfig(patients=6, min_size=64, max_size=96, seed=9))
    for f in (tmp_path / "other" / "train" / "NORMAL").iterdir():
        shutil.copyfile(f, ext / "NORMAL" / f.name)
    secret = tmp_path / "secret.jpeg"
    shutil.copyfile(next((tmp_path / "other" / "train" / "PNEUMONIA").iterdir()), secret)
    os.symlink(secret, ext / "PNEUMONIA" / "link.jpeg")  # the only PNEUMONIA "image": a link
    with pytest.raises(ExternalError, match=r"usable images per class \{'NORMAL': \d+, 'PNEUMONIA': 0\}"):
        build_all(external_cfg(a=ext), DataConfig(), SPLIT, manifest, cache, tmp_path / "ext")
    assert not (tmp_path / "ext" / "a" / "raw" / "test" / "PNEUMONIA" / "link.jpeg").exists()


def test_class_folders_are_found_at_any_depth_but_only_once(tmp_path):
    for label in ("normal", "PNEUMONIA"):
        (tmp_path / "a" / "deep" / "test" / label).mkdir(parents=True)
    assert find_class_layout(tmp_path / "a").root == tmp_path / "a" / "deep" / "test"
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "a" / "other" / label).mkdir(parents=True)
    with pytest.raises(SourceError, match=r"in 2 places \(deep/test/, other/\)"):
        find_class_layout(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no NORMAL/ and PNEUMONIA/ folders"):
        find_class_layout(tmp_path / "empty")


def test_set_names_must_be_column_names():
    from cxr.config import ConfigError, parse

    with pytest.raises(ConfigError, match="name 'Set-A' must be lower-case"):
        parse(ExternalConfig, {"sets": {"Set-A": "x"}}, "external")


def test_stage_script_reports_and_fails_with_one_line(synthetic_run, tmp_path):
    _, manifest, cache = synthetic_run
    params = tmp_path / "params.yaml"
    params.write_text(f"external:\n  sets:\n    missing: {tmp_path / 'nowhere'}\n")
    args = ["--params", params, "--manifest", manifest, "--cache", cache, "--out", tmp_path / "ext", "--metrics", "m"]
    p = run_stage_script("external", *map(str, args), cwd=tmp_path)
    assert p.returncode == 1 and p.stderr.strip().startswith("external: error:"), p.stderr
    assert "Traceback" not in p.stderr and "nowhere" in p.stderr


# --------------------------------------------------------------------------------------------
# Real images (../shared/data)
# --------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_kermany_test_half_is_accepted_and_fullres_copies_of_train_are_refused(shared_data, tmp_path):
    """Set A (half the official test split) shares no picture with train; kermany-fullres holds the same
    pictures as some kermany224 train images at another size (its README): refused, every one."""
    src = shared_data / "kermany224" / "train"
    fullres = sorted((shared_data / "kermany-fullres" / "train").rglob("*.jpeg"))
    names = {p.name for p in fullres}
    rng = random.Random(0)
    raw = tmp_path / "raw" / "train"
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((src / label).iterdir())
        chosen = [f for f in files if f.name in names] + rng.sample([f for f in files if f.name not in names], 150)
        (raw / label).mkdir(parents=True)
        for f in chosen:
            os.link(f, raw / label / f.name) if f.stat().st_dev == raw.stat().st_dev else shutil.copyfile(
                f, raw / label / f.name
            )
    manifest, cache = make_run(tmp_path, tmp_path / "raw", cache_size=96)

    metrics = build_all(
        external_cfg(kermany_a=shared_data / "kermany224-external-a"),
        DataConfig(),
        SPLIT,
        manifest,
        cache,
        tmp_path / "ext",
        progress=False,
    )
    assert metrics["kermany_a"]["images"] == {"NORMAL": 114, "PNEUMONIA": 210, "total": 324}
    assert metrics["kermany_a"]["closest_similarity"] < 0.99

    with pytest.raises(ExternalError, match="external set 'fullres': 120 image"):
        build_all(
            external_cfg(fullres=shared_data / "kermany-fullres"),
            DataConfig(),
            SPLIT,
            manifest,
            cache,
            tmp_path / "ext2",
            progress=False,
        )
    report = pd.read_csv(tmp_path / "ext2" / "fullres" / OVERLAP_FILE)
    assert (report["reason"] == "near_duplicate").all()
    assert sorted(Path(p).name for p in report["match_path"]) == sorted(Path(p).name for p in report["path"])
