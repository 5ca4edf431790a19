"""Hostile and careless input at intake (fetch from a folder, then split): one test per case.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_intake.py -q

Still holding, tested elsewhere: the decompression-bomb header (tests/data/test_manifest.py::
test_decompression_bomb_header_is_rejected_before_decoding), truncated/corrupt/empty/non-image
files quarantined (test_bad_files_are_quarantined_with_reasons), the messy Kaggle layout.
"""

from __future__ import annotations

import io
import os
import tracemalloc

import numpy as np
import pytest
from hostile_kit import files_under, kaggle_tree, put, xray_jpeg
from PIL import Image

from cxr.config import DataConfig, Plausibility, SplitConfig
from cxr.data import SKIPPED_REPORT
from cxr.data import manifest as M
from cxr.data.sources import SourceError, fetch

pytestmark = pytest.mark.timeout(60)


def _fetch(src, out):
    return fetch(DataConfig(source="path", path=str(src)), out, progress=False)


def _split(raw, **kw):
    return M.build_manifest(raw, SplitConfig(workers=1, **kw), progress=False)


# ---- security: nothing outside the source is read ------------------------------------------------


def test_symlink_to_a_secret_in_a_folder_source_is_not_followed(tmp_path):
    secret = put(tmp_path / "etc" / "shadow", b"root:$6$secret-hash:19000:0:99999:7:::\n")
    top = kaggle_tree(tmp_path / "src")
    (top / "train" / "NORMAL" / "IM-7778-0001.jpeg").symlink_to(secret)
    out = tmp_path / "raw"
    report = _fetch(top.parent, out)
    assert not (out / "train" / "NORMAL" / "IM-7778-0001.jpeg").exists()
    assert all(secret.read_bytes() not in p.read_bytes() for p in files_under(out))  # nowhere in data/raw
    assert any("not imported" in n for n in report.notes)
    q = _split(out).quarantine
    row = q[q["path"] == "train/NORMAL/IM-7778-0001.jpeg"]
    assert list(row["reason"]) == ["symbolic_link"] and "not followed" in row["detail"].iloc[0]


def test_symlinked_folder_inside_a_class_folder_is_not_entered(tmp_path):
    outside = tmp_path / "home" / "user"
    put(outside / "IM-9999-0001.jpeg", xray_jpeg(99))
    top = kaggle_tree(tmp_path / "src")
    (top / "train" / "NORMAL" / "more").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "raw"
    _fetch(top.parent, out)
    assert not (out / "train" / "NORMAL" / "more").exists()
    assert "train/NORMAL/more" in (out / SKIPPED_REPORT).read_text()


@pytest.mark.timeout(20)
def test_fifo_in_a_folder_source_is_reported_not_read(tmp_path):
    top = kaggle_tree(tmp_path / "src")
    os.mkfifo(top / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    out = tmp_path / "raw"
    _fetch(top.parent, out)  # would block forever on open() of the FIFO
    res = _split(out)
    row = res.quarantine[res.quarantine["path"] == "train/PNEUMONIA/person1_bacteria_1.jpeg"]
    assert list(row["reason"]) == ["not_a_regular_file"] and "FIFO" in row["detail"].iloc[0]


@pytest.mark.timeout(20)
def test_fifo_in_the_raw_tree_is_quarantined_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpeg")
    chk = M.check_file(tmp_path / "pipe.jpeg", SplitConfig().max_pixels)
    assert chk.reason == "not_a_regular_file" and "FIFO" in chk.detail


def test_split_hashes_by_streaming_not_by_reading_whole_files(tmp_path):
    big = tmp_path / "huge.jpeg"
    with big.open("wb") as f:  # 64 MiB that is no image (a member split used to read into memory whole)
        f.truncate(64 << 20)
    tracemalloc.start()
    chk = M.check_file(big, SplitConfig().max_pixels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chk.reason == "not_an_image" and len(chk.sha256) == 64
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB for a 64 MiB file"


# ---- silent loss ------------------------------------------------------------------------------------


def test_class_folders_in_two_letter_cases_stop_with_both_names(tmp_path):
    top = kaggle_tree(tmp_path / "src")
    put(top / "train" / "normal" / "IM-5000-0001.jpeg", xray_jpeg(5000))
    with pytest.raises(SourceError) as err:
        _fetch(top.parent, tmp_path / "raw")
    msg = str(err.value)
    assert "train/NORMAL/" in msg and "train/normal/" in msg and "Merge them" in msg


def test_val_beside_validation_stops_with_both_names(tmp_path):
    top = kaggle_tree(tmp_path / "src")
    put(top / "val" / "NORMAL" / "IM-6000-0001.jpeg", xray_jpeg(6000))
    put(top / "val" / "PNEUMONIA" / "person6001_virus_1.jpeg", xray_jpeg(6001))
    put(top / "validation" / "NORMAL" / "IM-6002-0001.jpeg", xray_jpeg(6002))
    with pytest.raises(SourceError) as err:
        _fetch(top.parent, tmp_path / "raw")
    assert "val/" in str(err.value) and "validation/" in str(err.value) and "the val split" in str(err.value)


def test_hidden_file_in_a_class_folder_is_used_or_quarantined_never_dropped(tmp_path):
    top = kaggle_tree(tmp_path / "src", n_normal=6, n_pneu=6)
    put(top / "train" / "NORMAL" / ".IM-7000-0001.jpeg", xray_jpeg(7000))  # a real image, hidden
    put(top / "train" / "PNEUMONIA" / ".notes", b"scratch")  # not an image
    out = tmp_path / "raw"
    report = _fetch(top.parent, out)
    res = _split(out)
    scanned = res.metrics["files_scanned"]
    assert scanned == report.total  # what fetch counted, split saw
    assert "train/NORMAL/.IM-7000-0001.jpeg" in set(res.manifest["path"])
    assert "train/PNEUMONIA/.notes" in set(res.quarantine["path"])
    assert len(res.manifest) + res.metrics["duplicates_removed"] + len(res.quarantine) == scanned


def test_a_dataset_too_small_for_validation_and_test_stops_split_with_counts(tmp_path):
    top = kaggle_tree(tmp_path / "src", n_normal=2, n_pneu=2, test=False)
    out = tmp_path / "raw"
    _fetch(top.parent, out)
    with pytest.raises(M.ManifestError) as err:
        _split(out)
    msg = str(err.value)
    assert "too small to split" in msg and "val:" in msg and "test:" in msg and "Add images" in msg


# ---- plausibility: what cannot be a chest radiograph -------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


IMPLAUSIBLE = {
    "black": (np.zeros((64, 64), np.uint8), "blank_or_constant"),
    "white": (np.full((64, 64), 255, np.uint8), "blank_or_constant"),
    "one_pixel": (np.full((1, 1), 128, np.uint8), "too_small"),
    "one_by_20000": (np.tile(np.arange(200, dtype=np.uint8), 100)[None, :], "too_small"),
    "strip_40_by_2000": (np.add.outer(np.arange(40), np.arange(2000) // 10).astype(np.uint8), "extreme_aspect_ratio"),
    "noise": (np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8), "noise_not_an_image"),
}


@pytest.mark.parametrize("case", sorted(IMPLAUSIBLE))
def test_implausible_image_is_quarantined_at_split(case):
    arr, reason = IMPLAUSIBLE[case]
    chk = M.check_bytes(_png(arr), SplitConfig().max_pixels, Plausibility())
    assert chk.reason == reason, chk
    assert "split.plausibility" in chk.detail


def test_a_plausible_radiograph_passes_the_plausibility_checks():
    assert M.check_bytes(xray_jpeg(1, size=(256, 200)), SplitConfig().max_pixels, Plausibility()).reason is None


def test_the_synthetic_default_dataset_passes_every_plausibility_check(synthetic_raw):
    res = _split(synthetic_raw)
    assert not set(res.quarantine["reason"]) & {
        "too_small",
        "extreme_aspect_ratio",
        "blank_or_constant",
        "noise_not_an_image",
    }


def test_a_file_in_a_split_folder_outside_the_class_folders_is_reported(tmp_path):
    top = kaggle_tree(tmp_path / "src")
    put(top / "train" / "IM-8000-0001.jpeg", xray_jpeg(8000))  # no class folder: no label
    out = tmp_path / "raw"
    _fetch(top.parent, out)
    q = _split(out).quarantine
    assert list(q.loc[q["path"] == "train/IM-8000-0001.jpeg", "reason"]) == ["outside_class_folder"]


def test_a_linked_dataset_folder_is_not_followed_and_the_message_says_so(tmp_path):
    top = kaggle_tree(tmp_path / "elsewhere")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "chest_xray").symlink_to(top, target_is_directory=True)
    with pytest.raises(SourceError) as err:
        _fetch(tmp_path / "src", tmp_path / "raw")
    assert "symbolic link: not followed" in str(err.value) and "point data.path at its target" in str(err.value)
