"""Tests of cxr.data.manifest and src/split.py: patient ids, patient-level splits, quarantine, duplicates.

.venv/bin/pytest tests/data/test_manifest.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import runpy
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr.data import checks
from cxr.data import manifest as M
from cxr.data import patients as P
from cxr.data.config import SplitConfig
from cxr.data.pool import imap_progress
from pipeline_repo import run_stage_script

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Builders: tiny real image files in tmp_path
# --------------------------------------------------------------------------------------------


def jpeg_bytes(seed: int, size=(40, 32), mode="L") -> bytes:
    """A unique radiograph-plausible JPEG: a smooth gradient plus a little noise (no two seeds give
    identical bytes; pure noise would be quarantined as not a radiograph)."""
    rng = np.random.default_rng(seed)
    w, h = size
    gray = np.add.outer(np.linspace(20, 120, h), np.linspace(0, 100, w)) + rng.integers(0, 12, (h, w))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    arr = gray if mode == "L" else np.stack([gray, gray, np.flipud(gray)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write(raw: Path, rel: str, data: bytes) -> Path:
    path = raw / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(raw: Path, spec: dict[str, list[str]], seed0: int = 0) -> Path:
    """``spec``: {"train/NORMAL": [file names], ...}; each file a distinct small JPEG."""
    seed = seed0
    for folder, names in spec.items():
        for name in names:
            write(raw, f"{folder}/{name}", jpeg_bytes(seed))
            seed += 1
    return raw


def basic_spec(n_normal=8, n_pneu=10, per_patient=2, test=True) -> dict[str, list[str]]:
    spec = {
        "train/NORMAL": [f"IM-{p:04d}-{k:04d}.jpeg" for p in range(n_normal) for k in range(per_patient)],
        "train/PNEUMONIA": [f"person{p}_bacteria_{p * 10 + k}.jpeg" for p in range(n_pneu) for k in range(per_patient)],
        "val/NORMAL": ["NORMAL2-IM-1427-0001.jpeg"],
        "val/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
    }
    if test:
        spec["test/NORMAL"] = ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg"]
        spec["test/PNEUMONIA"] = ["person1_virus_6.jpeg", "person3_bacteria_10.jpeg"]
    return spec


CFG = SplitConfig(workers=1)  # in-process: the tiny trees of these tests need no pool


# --------------------------------------------------------------------------------------------
# Patient ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-0587"),
        ("person1180_bacteria_3125.jpeg", "person1180"),
        ("person12_virus_46.jpeg", "person12"),
        ("person1_virus_6_1.jpeg", "person1"),
        ("scan_0001.png", None),
        ("IMG-0001.jpeg", None),
        ("personA_virus_1.jpeg", None),
        ("IM-.jpeg", None),
    ],
)
def test_parse_patient_id(name, expected):
    assert P.parse_patient_id(name) == expected


def test_patient_key_spaces_and_fallback():
    assert P.patient_key("train/PNEUMONIA/person12_virus_46.jpeg") == "train/person12"
    # Person numbers restart in the official test folder: a different child.
    assert P.patient_key("test/PNEUMONIA/person12_virus_46.jpeg") == "test/person12"
    # The official val shares train's numbering when merged.
    assert P.patient_key("val/NORMAL/NORMAL2-IM-1427-0001.jpeg") == "train/NORMAL2-IM-1427"
    assert P.patient_key("val/NORMAL/NORMAL2-IM-1427-0001.jpeg", merge_official_val=False) == "val/NORMAL2-IM-1427"
    a = P.patient_key("train/NORMAL/sub/scan.png")
    b = P.patient_key("train/PNEUMONIA/scan.png")
    c = P.patient_key("train/NORMAL/other.png")
    assert len({a, b, c}) == 3 and a.startswith("train/")


# --------------------------------------------------------------------------------------------
# Splitting (pure, on tables: no images needed)
# --------------------------------------------------------------------------------------------


def image_table(n_normal=100, n_pneu=300, test_patients=0, val_images=0, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label, n, prefix in (("NORMAL", n_normal, "IM-"), ("PNEUMONIA", n_pneu, "person")):
        for p in range(n):
            for _ in range(int(rng.integers(1, 4))):
                rows.append({"patient_id": f"train/{prefix}{label}{p}", "label": label, "source_split": "train"})
    for p in range(test_patients):
        label = "NORMAL" if p % 3 == 0 else "PNEUMONIA"
        rows.append({"patient_id": f"test/p{p}", "label": label, "source_split": "test"})
    for p in range(val_images):
        rows.append({"patient_id": f"train/v{p}", "label": M.CLASSES[p % 2], "source_split": "val"})
    return pd.DataFrame(rows)


def patient_splits(images: pd.DataFrame, split: pd.Series) -> pd.Series:
    return split.groupby(images["patient_id"]).agg(lambda s: set(s))


def test_split_is_per_patient_stratified_and_proportional():
    images = image_table()
    split = P.assign_splits(images, 0.15, 0.2, seed=3)
    assert split.notna().all() and set(split) == {"train", "val", "test"}
    per_patient = patient_splits(images, split)
    assert per_patient.map(len).max() == 1, "a patient's images landed in two splits"
    first = per_patient.map(lambda s: next(iter(s)))
    label = images.groupby("patient_id")["label"].first()
    for cls, n in (("NORMAL", 100), ("PNEUMONIA", 300)):
        counts = first[label == cls].value_counts()
        assert counts["val"] == round(0.15 * n)
        assert counts["test"] == round(0.2 * n)
        assert counts["train"] == n - round(0.15 * n) - round(0.2 * n)


def test_split_is_seeded():
    images = image_table()
    a = P.assign_splits(images, 0.15, 0.15, seed=1)
    b = P.assign_splits(images, 0.15, 0.15, seed=1)
    c = P.assign_splits(images, 0.15, 0.15, seed=2)
    pd.testing.assert_series_equal(a, b)
    assert (a != c).any()
    # Shuffled input rows give the same assignment: it depends on patients, not on row order.
    shuffled = images.sample(frac=1, random_state=0)
    pd.testing.assert_series_equal(P.assign_splits(shuffled, 0.15, 0.15, seed=1).sort_index(), a)


def test_official_test_is_kept_and_nothing_else_drawn_into_it():
    images = image_table(test_patients=30)
    split = P.assign_splits(images, 0.15, 0.2, seed=0)
    assert (split[images["source_split"] == "test"] == "test").all()
    assert (split[images["source_split"] == "train"] != "test").all()
    assert set(split[images["source_split"] == "train"]) == {"train", "val"}


def test_official_val_merged_or_kept():
    images = image_table(n_normal=20, n_pneu=20, val_images=40)
    merged = P.assign_splits(images, 0.5, 0.0, seed=0, merge_official_val=True)
    from_val = merged[images["source_split"] == "val"]
    assert set(from_val) == {"train", "val"}, "merged val images should be redrawn like train's"
    kept = P.assign_splits(images, 0.5, 0.0, seed=0, merge_official_val=False)
    assert (kept[images["source_split"] == "val"] == "val").all()


def test_tiny_class_still_reaches_every_split_and_train():
    images = pd.DataFrame(
        {
            "patient_id": [f"train/p{i}" for i in range(3)] + [f"train/q{i}" for i in range(30)],
            "label": ["NORMAL"] * 3 + ["PNEUMONIA"] * 30,
            "source_split": "train",
        }
    )
    split = P.assign_splits(images, 0.1, 0.1, seed=0)
    assert sorted(split[:3]) == ["test", "train", "val"]


# --------------------------------------------------------------------------------------------
# The whole stage on image files
# --------------------------------------------------------------------------------------------


def test_build_manifest_columns_and_invariants(tmp_path):
    raw = make_tree(tmp_path / "raw", basic_spec())
    res = M.build_manifest(raw, CFG, progress=False)
    df = res.manifest
    assert list(df.columns) == M.MANIFEST_COLUMNS
    assert len(df) == 16 + 20 + 2 + 4 and res.quarantine.empty
    row = df[df["path"] == "train/PNEUMONIA/person3_bacteria_31.jpeg"].iloc[0]
    assert (row["label"], row["patient_id"], row["source_split"]) == ("PNEUMONIA", "train/person3", "train")
    assert (row["width"], row["height"], row["mode"]) == (40, 32, "L")
    assert row["sha256"] == hashlib.sha256((raw / row["path"]).read_bytes()).hexdigest()
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    # Official test kept; its person numbers are other children than train's.
    assert set(df.loc[df["source_split"] == "test", "split"]) == {"test"}
    assert set(df.loc[df["source_split"] == "train", "split"]) <= {"train", "val"}
    assert "test/person1" in set(df["patient_id"]) and "train/person1" in set(df["patient_id"])
    assert res.metrics["shared_patients"] == 0


def test_bad_files_are_quarantined_with_reasons(tmp_path):
    raw = make_tree(tmp_path / "raw", basic_spec(test=False))
    write(raw, "train/NORMAL/IM-0900-0001.jpeg", b"")
    full = jpeg_bytes(99, size=(64, 64))
    write(raw, "train/NORMAL/IM-0901-0001.jpeg", full[: int(len(full) * 0.6)])
    write(raw, "train/PNEUMONIA/person900_virus_1.jpeg", b"this is a text file, not an image\n" * 5)
    write(raw, "train/PNEUMONIA/person901_virus_2.jpeg", jpeg_bytes(100, size=(300, 200)))
    write(raw, "train/PNEUMONIA/.DS_Store", b"\0junk")  # OS junk: skipped, not data
    write(raw, "train/NORMAL/__MACOSX/._IM-0000-0000.jpeg", b"junk")

    res = M.build_manifest(raw, SplitConfig(workers=1, max_pixels=50_000), progress=False)
    reasons = dict(zip(res.quarantine["path"], res.quarantine["reason"]))
    assert reasons == {
        "train/NORMAL/IM-0900-0001.jpeg": checks.EMPTY,
        "train/NORMAL/IM-0901-0001.jpeg": checks.TRUNCATED,
        "train/PNEUMONIA/person900_virus_1.jpeg": checks.NOT_IMAGE,
        "train/PNEUMONIA/person901_virus_2.jpeg": checks.TOO_LARGE,
    }
    assert "60000" in res.quarantine.set_index("path").loc["train/PNEUMONIA/person901_virus_2.jpeg", "detail"]
    assert not set(reasons) & set(res.manifest["path"])
    assert len(res.manifest) == 16 + 20 + 2  # every good file still made it
    assert res.metrics["quarantined"] == 4 and res.metrics["files_scanned"] == 42


def test_truncation_detected_even_if_pillow_was_told_to_tolerate_it(tmp_path):
    from PIL import ImageFile

    full = jpeg_bytes(5, size=(64, 64))
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        assert checks.check_bytes(full[:-200], 10**6).reason == checks.TRUNCATED
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert ImageFile.LOAD_TRUNCATED_IMAGES is old
    assert checks.check_bytes(full, 10**6).reason is None


def test_decompression_bomb_header_is_rejected_before_decoding():
    # A 3 KB PNG declaring 5000 x 5000 pixels: caught from the header alone.
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 10_000
    chk = checks.check_bytes(buf.getvalue(), max_pixels=1_000_000)
    assert chk.reason == checks.TOO_LARGE and "25000000" in chk.detail


def test_duplicates_kept_once_and_removed_from_train_side(tmp_path):
    raw = make_tree(tmp_path / "raw", basic_spec())
    same = jpeg_bytes(500)
    write(raw, "train/NORMAL/IM-0700-0001.jpeg", same)
    write(raw, "train/NORMAL/IM-0701-0001.jpeg", same)  # same split: keep one
    leak = jpeg_bytes(501)
    write(raw, "train/PNEUMONIA/person700_bacteria_1.jpeg", leak)
    write(raw, "test/PNEUMONIA/person9_bacteria_2.jpeg", leak)  # train + test: train copy goes
    clash = jpeg_bytes(502)
    write(raw, "train/NORMAL/IM-0702-0001.jpeg", clash)
    write(raw, "train/PNEUMONIA/person702_virus_1.jpeg", clash)  # two labels: neither can be trusted

    res = M.build_manifest(raw, CFG, progress=False)
    df = res.manifest
    assert df["sha256"].is_unique
    assert (df["sha256"] == hashlib.sha256(same).hexdigest()).sum() == 1
    leak_rows = df[df["sha256"] == hashlib.sha256(leak).hexdigest()]
    assert leak_rows["path"].tolist() == ["test/PNEUMONIA/person9_bacteria_2.jpeg"]
    assert res.metrics["duplicates_removed"] == 2
    assert res.metrics["duplicates_cross_split"] == 1
    assert set(res.quarantine["reason"]) == {M.CONFLICTING} and len(res.quarantine) == 2


def test_official_test_split_stays_whole(tmp_path):
    # The published results are on all 624 official test images, repeats included: keep them, count them.
    raw = make_tree(tmp_path / "raw", basic_spec())
    n_test = sum(1 for p in (raw / "test").rglob("*.jpeg"))
    twice = jpeg_bytes(600)
    write(raw, "test/PNEUMONIA/person800_bacteria_1.jpeg", twice)
    write(raw, "test/PNEUMONIA/person801_bacteria_2.jpeg", twice)  # repeated within test: both stay
    write(raw, "train/PNEUMONIA/person802_virus_3.jpeg", twice)  # and in train: that copy goes
    thrice = jpeg_bytes(601)
    for i in range(3):
        write(raw, f"test/NORMAL/IM-09{i}0-0001.jpeg", thrice)

    res = M.build_manifest(raw, CFG, progress=False)
    test = res.manifest[res.manifest["source_split"] == "test"]
    assert len(test) == n_test + 5 and (test["split"] == "test").all()
    assert res.metrics["images"]["test"]["total"] == n_test + 5
    assert res.metrics["duplicates_within_test_kept"] == 1 + 2
    assert res.metrics["duplicates_removed"] == 1 and res.metrics["duplicates_cross_split"] == 1
    assert "person802_virus_3.jpeg" not in " ".join(res.manifest["path"])
    assert "3 repeats within the official test kept" in M.summary_table(res.metrics)


def test_missing_class_fails_clearly(tmp_path):
    spec = basic_spec(test=False)
    del spec["train/PNEUMONIA"], spec["val/PNEUMONIA"]
    raw = make_tree(tmp_path / "raw", spec)
    with pytest.raises(M.ManifestError, match=r"no usable PNEUMONIA.*'NORMAL': 17.*expected images of both classes"):
        M.build_manifest(raw, CFG, progress=False)


def test_all_files_of_a_class_bad_fails_clearly(tmp_path):
    raw = make_tree(tmp_path / "raw", {"train/NORMAL": ["IM-0001-0001.jpeg"]})
    write(raw, "train/PNEUMONIA/person1_virus_1.jpeg", b"")
    with pytest.raises(M.ManifestError, match=r"PNEUMONIA.*1 quarantined"):
        M.build_manifest(raw, CFG, progress=False)


def test_empty_or_wrong_tree_fails_clearly(tmp_path):
    with pytest.raises(M.ManifestError, match="not found.*dvc repro fetch"):
        M.build_manifest(tmp_path / "nope", CFG, progress=False)
    raw = tmp_path / "raw"
    (raw / "chest_xray" / "train").mkdir(parents=True)  # an archive unpacked one level too deep
    (raw / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(
        M.ManifestError, match=r"no image files.*expected .*\{NORMAL,PNEUMONIA\}.*chest_xray/ \[train\]"
    ):
        M.build_manifest(raw, CFG, progress=False)


def test_parallel_verification_matches_in_process(tmp_path):
    raw = make_tree(tmp_path / "raw", basic_spec(n_normal=20, n_pneu=30))
    write(raw, "train/NORMAL/IM-0900-0001.jpeg", b"")
    paths = [p for p, _, _ in M.scan_tree(raw)]
    assert len(paths) >= 64  # enough for imap_progress to start a pool
    serial = checks.check_files(raw, paths, 10**6, workers=1, progress=False)
    pooled = checks.check_files(raw, paths, 10**6, workers=2, progress=False)
    assert serial == pooled and sum(c.reason == checks.EMPTY for c in pooled) == 1


def _die_on_13(i: int) -> int:
    if i == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer, or SIGBUS on a full disk, would
    return i * 2


@pytest.mark.timeout(120)
def test_a_worker_that_dies_raises_instead_of_hanging():
    assert (
        list(imap_progress(_die_on_13, list(range(12)) * 8, workers=2, progress=False))
        == [i * 2 for i in range(12)] * 8
    )
    with pytest.raises(RuntimeError, match=r"process died .*out of memory.*disk filled up"):
        list(imap_progress(_die_on_13, list(range(80)), workers=2, desc="decode", progress=False))


def test_split_stage_writes_manifest_quarantine_and_metrics(tmp_path, capsys):
    raw = make_tree(tmp_path / "raw", basic_spec())
    write(raw, "train/NORMAL/IM-0900-0001.jpeg", b"")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"split": {"val_fraction": 0.25, "seed": 7, "workers": 1}}))
    out = tmp_path / "out"
    stage = runpy.run_path(str(REPO / "src" / "split.py"), run_name="split_stage")
    rc = stage["main"](
        [
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--manifest",
            str(out / "manifest.csv"),
            "--quarantine",
            str(out / "quarantine.csv"),
            "--metrics",
            str(out / "metrics" / "data.json"),
            "--no-progress",
        ]
    )
    assert rc == 0
    df = M.read_manifest(out / "manifest.csv")
    q = pd.read_csv(out / "quarantine.csv")
    metrics = json.loads((out / "metrics" / "data.json").read_text())
    assert q["path"].tolist() == ["train/NORMAL/IM-0900-0001.jpeg"]
    for s in M.SPLITS:
        part = df[df["split"] == s]
        assert metrics["images"][s] == {
            "NORMAL": int((part["label"] == "NORMAL").sum()),
            "PNEUMONIA": int((part["label"] == "PNEUMONIA").sum()),
            "total": len(part),
        }
        assert metrics["patients"][s] == part["patient_id"].nunique()
    assert metrics["images"]["test"]["total"] == 4 and metrics["images"]["val"]["total"] > 0
    assert sum(metrics["images"][s]["total"] for s in M.SPLITS) == len(df) == 42
    assert (metrics["shared_patients"], metrics["duplicates_removed"], metrics["quarantined"]) == (0, 0, 1)
    printed = capsys.readouterr().out
    assert "shared patients: 0" in printed and "quarantined: 1" in printed


def test_shared_patients_is_computed_not_assumed():
    df = pd.DataFrame({"patient_id": ["a", "a", "b", "c", "c"], "split": ["train", "val", "val", "test", "test"]})
    assert P.shared_patients(df) == 1


def test_split_stage_reports_error_without_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("split: {}\n")
    proc = run_stage_script(
        "split",
        "--params",
        str(params),
        "--raw",
        str(tmp_path / "missing"),
        "--manifest",
        "m.csv",
        "--quarantine",
        "q.csv",
        "--metrics",
        "d.json",
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "split: error:" in proc.stderr and "dvc repro fetch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_synthetic_tree_end_to_end(synthetic_raw):
    res = M.build_manifest(synthetic_raw, SplitConfig(workers=1), progress=False)
    assert res.quarantine.empty and res.metrics["shared_patients"] == 0
    for s in M.SPLITS:
        assert res.metrics["images"][s]["NORMAL"] > 0 and res.metrics["images"][s]["PNEUMONIA"] > 0
    assert (res.manifest.loc[res.manifest["source_split"] == "test", "split"] == "test").all()
    assert res.manifest["patient_id"].str.match(r"^(train|test)/(NORMAL2-)?(IM-\d+|person\d+)$").all()
