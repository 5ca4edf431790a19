"""Hostile and careless input at intake (fetch from a folder, then split): one test per case.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_intake.py -q

Still holding, tested elsewhere: the decompression-bomb header (tests/data/test_manifest.py::
test_decompression_bomb_header_is_rejected_before_decoding), truncated/corrupt/empty/non-image
files quarantined (test_bad_files_are_quarantined_with_reasons), the messy Kaggle layout.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_kit import files_under, kaggle_tree, put, run_unprivileged, unprivileged_dir, xray_jpeg
from PIL import Image

from cxr.data import SKIPPED_REPORT, checks
from cxr.data import manifest as M
from cxr.data.cache import build_cache
from cxr.data.config import DataConfig, Plausibility, PreprocessConfig, SplitConfig
from cxr.data.intake import write_skipped
from cxr.data.sources import SourceError, fetch
from cxr.stage import run_stage
from pipeline_repo import load_stage, run_stage_script

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
    chk = checks.check_file(tmp_path / "pipe.jpeg", SplitConfig().max_pixels)
    assert chk.reason == "not_a_regular_file" and "FIFO" in chk.detail


def test_split_hashes_by_streaming_not_by_reading_whole_files(tmp_path):
    big = tmp_path / "huge.jpeg"
    with big.open("wb") as f:  # 64 MiB that is no image (a member split used to read into memory whole)
        f.truncate(64 << 20)
    tracemalloc.start()
    chk = checks.check_file(big, SplitConfig().max_pixels)
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
    chk = checks.check_bytes(_png(arr), SplitConfig().max_pixels, Plausibility())
    assert chk.reason == reason, chk
    assert "split.plausibility" in chk.detail


def test_a_plausible_radiograph_passes_the_plausibility_checks():
    assert checks.check_bytes(xray_jpeg(1, size=(256, 200)), SplitConfig().max_pixels, Plausibility()).reason is None


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


# ---- round two: names that break CSVs, folders that nearly match, what cannot be read -------------


def test_a_carriage_return_in_a_file_name_survives_fetch_split_and_preprocess(tmp_path):
    top = kaggle_tree(tmp_path / "src", n_normal=6, n_pneu=6)
    name = "IM-0914-0001\rcr.jpeg"
    put(top / "train" / "NORMAL" / name, xray_jpeg(914))
    out = tmp_path / "raw"
    _fetch(top.parent, out)
    res = _split(out)
    M.write_manifest(res.manifest, tmp_path / "manifest.csv")
    back = M.read_manifest(tmp_path / "manifest.csv")  # used to die: int('') in column width
    assert f"train/NORMAL/{name}" in set(back["path"]) and len(back) == len(res.manifest)
    info = build_cache(tmp_path / "manifest.csv", out, tmp_path / "cache", PreprocessConfig(cache_size=32, workers=1))
    assert sum(info["counts"][s]["total"] for s in info["counts"]) == len(back)


NASTY_NAMES = ["a\rb.jpeg", "a\nb.jpeg", "a,b.jpeg", 'a"b.jpeg', "=HYPERLINK(1).jpeg", "+1.jpeg", "-1.jpeg", "@x.jpeg"]


def test_every_legal_file_name_round_trips_through_the_csvs(tmp_path):
    paths = [f"train/NORMAL/{n}" for n in NASTY_NAMES]
    manifest = pd.DataFrame(
        {c: ["x"] * len(paths) for c in M.MANIFEST_COLUMNS} | {"path": paths, "width": 64, "height": 48}
    )
    M.write_manifest(manifest, tmp_path / "manifest.csv")
    assert list(M.read_manifest(tmp_path / "manifest.csv")["path"]) == paths
    rows = [{"path": p, "reason": "symbolic_link", "detail": "d"} for p in paths]
    write_skipped(tmp_path, rows)
    assert sorted(r["path"] for r in M.read_skipped(tmp_path)) == sorted(paths)
    M.write_quarantine(pd.DataFrame(rows), tmp_path / "quarantine.csv")
    assert sorted(pd.read_csv(tmp_path / "quarantine.csv", dtype=str)["path"]) == sorted(paths)


@pytest.mark.parametrize("folder", ["Normal ", "PNEUMONİA", "NORMAL_batch2"])
def test_images_in_a_folder_that_is_not_exactly_a_class_folder_are_reported(tmp_path, folder):
    top = kaggle_tree(tmp_path / "src")
    for i in range(3):
        put(top / "train" / folder / f"IM-{900 + i:04d}-0001.jpeg", xray_jpeg(900 + i))
    put(top / "train" / folder / "deeper" / "IM-0990-0001.jpeg", xray_jpeg(990))
    out = tmp_path / "raw"
    report = _fetch(top.parent, out)
    q = _split(out).quarantine
    lost = q[q["path"].str.startswith(f"train/{folder}/")]
    assert len(lost) == 4 and set(lost["reason"]) == {"outside_class_folder"}  # used to vanish: 6 of 24
    assert f"train/{folder}/" in lost["detail"].iloc[0] and "rename the folder" in lost["detail"].iloc[0]
    assert report.total + len(lost) == len(files_under(top))
    assert any("4 outside_class_folder" in n for n in report.notes)


def test_a_data_path_of_the_filesystem_root_is_refused_in_one_line(tmp_path):
    with pytest.raises(SourceError) as err:  # used to walk into /proc: PermissionError on /proc/1/cwd
        _fetch("/", tmp_path / "raw")
    assert "root of the filesystem" in str(err.value) and "Point data.path at the dataset" in str(err.value)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: path\n  path: /proc\n")
    proc = run_stage_script("fetch", "--params", str(params), "--out", str(tmp_path / "raw"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fetch: error: data.path /proc is a system folder")


def _fetch_as_nobody(src: Path, out: Path) -> subprocess.CompletedProcess:
    code = (
        "from pathlib import Path\nfrom cxr.config import DataConfig\nfrom cxr.data.sources import fetch\n"
        f"r = fetch(DataConfig(source='path', path={str(src)!r}, link=False), Path({str(out)!r}), progress=False)\n"
        "print(r.total)\n"
    )
    return run_unprivileged(code)


def test_a_folder_the_user_cannot_enter_is_reported_not_skipped(tmp_path):
    base = unprivileged_dir()
    try:
        top = kaggle_tree(base / "src", n_normal=6, n_pneu=6)
        locked = top / "train" / "NORMAL" / "batch3"
        for i in range(3):
            put(locked / f"IM-{700 + i:04d}-0001.jpeg", xray_jpeg(700 + i))
        locked.chmod(0o000)
        proc = _fetch_as_nobody(top.parent, base / "raw")
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout.split()[-1]) == 24  # the 3 locked images are not counted as imported ...
        rows = {r["path"]: r for r in M.read_skipped(base / "raw")}
        row = rows["train/NORMAL/batch3"]  # ... and not lost without a word: the folder is reported
        assert row["reason"] == "unreadable" and "cannot be listed" in row["detail"] and "chmod" in row["detail"]
    finally:
        (base / "src" / "chest_xray" / "train" / "NORMAL" / "batch3").chmod(0o755)
        shutil.rmtree(base)


def test_a_file_the_user_cannot_read_is_reported_not_a_traceback(tmp_path):
    base = unprivileged_dir()
    try:
        top = kaggle_tree(base / "src")
        secret = put(top / "train" / "PNEUMONIA" / "person777_virus_1.jpeg", xray_jpeg(777))
        secret.chmod(0o000)
        proc = _fetch_as_nobody(top.parent, base / "raw")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr  # used to: PermissionError
        row = {r["path"]: r for r in M.read_skipped(base / "raw")}["train/PNEUMONIA/person777_virus_1.jpeg"]
        assert row["reason"] == "unreadable" and "chmod u+r" in row["detail"]
    finally:
        shutil.rmtree(base)


def test_a_full_disk_in_preprocess_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    top = kaggle_tree(tmp_path / "src", n_normal=6, n_pneu=6)
    raw = tmp_path / "raw"
    _fetch(top.parent, raw)
    M.write_manifest(_split(raw).manifest, tmp_path / "manifest.csv")

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    argv = ["--params", str(tmp_path / "none.yaml"), "--raw", str(raw), "--manifest", str(tmp_path / "manifest.csv")]
    (tmp_path / "none.yaml").write_text("preprocess:\n  workers: 1\n  cache_size: 32\n")
    stage = load_stage("preprocess")
    with pytest.raises(SystemExit) as end:  # used to: an uncaught OSError with a traceback
        run_stage(
            "preprocess", lambda: stage.main([*argv, "--out", str(tmp_path / "cache"), "--no-progress"]), stage.ERRORS
        )
    assert str(end.value.code).startswith("preprocess: error: not enough disk space for the image cache")
