"""The synthetic generator: determinism, the real naming scheme, class ratio, sizes, splits.

.venv/bin/pytest tests/data/test_synthetic.py -q
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr import CLASSES, SPLITS
from cxr.data.config import SyntheticConfig
from cxr.data.synthetic import generate

NORMAL_RE = re.compile(r"^(?P<pid>(NORMAL2-)?IM-\d{4})-(?P<k>\d{4})\.jpeg$")
PNEU_RE = re.compile(r"^(?P<pid>person\d+)_(bacteria|virus)_(?P<m>\d+)\.jpeg$")

SMALL = dict(patients=80, max_images_per_patient=3, min_size=48, max_size=96)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpeg"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "raw"
    counts = generate(out, SyntheticConfig(**SMALL, seed=3))
    return out, counts


def test_same_seed_same_bytes_different_seed_differs(tmp_path, tree):
    out, _ = tree
    again = tmp_path / "again"
    generate(again, SyntheticConfig(**SMALL, seed=3))
    assert _files(out) == _files(again)

    other = tmp_path / "other"
    generate(other, SyntheticConfig(**SMALL, seed=4))
    a, b = _files(out), _files(other)
    assert set(a) != set(b) or any(a[k] != b[k] for k in a)


def test_canonical_tree_and_counts(tree):
    out, counts = tree
    for split in SPLITS:
        for label in CLASSES:
            folder = out / split / label
            assert folder.is_dir()
            assert counts[split][label] == len(list(folder.iterdir()))
    assert sum(counts["val"].values()) == SyntheticConfig().official_val_images
    assert all(counts[s][c] > 0 for s in ("train", "test") for c in CLASSES)


def test_real_naming_scheme_and_images_per_patient(tree):
    out, _ = tree
    per_patient = defaultdict(list)
    for f in out.rglob("*.jpeg"):
        split, label = f.parent.parent.name, f.parent.name
        m = (NORMAL_RE if label == "NORMAL" else PNEU_RE).match(f.name)
        assert m, f"{label} file with a non-real name: {f.name}"
        per_patient[(split, label, m["pid"])].append(f.name)
    for (_split, label, _pid), names in per_patient.items():
        assert 1 <= len(names) <= SMALL["max_images_per_patient"]
        if label == "NORMAL":  # IM-NNNN-0001, -0002, ... numbered from 1 without gaps
            assert sorted(int(NORMAL_RE.match(n)["k"]) for n in names) == list(range(1, len(names) + 1))
        else:  # one kind (bacteria or virus) per child
            assert len({n.split("_")[1] for n in names}) == 1
    assert any(pid.startswith("NORMAL2-") for _, _, pid in per_patient)
    assert any(len(n) > 1 for n in per_patient.values())
    kinds = {n.split("_")[1] for (_, label, _), ns in per_patient.items() if label == "PNEUMONIA" for n in ns}
    assert kinds == {"bacteria", "virus"}


def test_patient_ratio_and_test_fraction(tree):
    out, _ = tree
    patients = defaultdict(set)
    for f in out.rglob("*.jpeg"):
        split, label = f.parent.parent.name, f.parent.name
        pid = (NORMAL_RE if label == "NORMAL" else PNEU_RE).match(f.name)["pid"]
        patients[label].add((split, pid))
    cfg = SyntheticConfig(**SMALL)
    assert len(patients["NORMAL"]) + len(patients["PNEUMONIA"]) == cfg.patients
    ratio = len(patients["PNEUMONIA"]) / len(patients["NORMAL"])
    assert abs(ratio - cfg.pneumonia_ratio) < 0.3
    for label in CLASSES:
        share = sum(s == "test" for s, _ in patients[label]) / len(patients[label])
        assert abs(share - cfg.official_test_fraction) < 0.06


def test_sizes_in_range_some_non_square_some_rgb(tree):
    out, _ = tree
    sizes, modes = [], set()
    for f in out.rglob("*.jpeg"):
        with Image.open(f) as im:
            assert im.format == "JPEG"
            sizes.append(im.size)
            modes.add(im.mode)
    assert all(SMALL["min_size"] <= s <= SMALL["max_size"] for wh in sizes for s in wh)
    assert sum(w != h for w, h in sizes) > len(sizes) // 2
    assert len(set(sizes)) > 10
    assert modes == {"L", "RGB"}


def test_images_look_like_radiographs(tree):
    """Dark air at the sides, a bright mediastinum between two darker lung fields."""
    out, _ = tree
    for f in sorted(out.glob("train/*/*.jpeg"))[:20]:
        a = np.asarray(Image.open(f).convert("L").resize((64, 64)), dtype=np.float32)
        centre = a[20:40, 29:35].mean()
        lungs = (a[20:40, 12:20].mean() + a[20:40, 44:52].mean()) / 2
        assert centre > lungs + 15, f.name
        assert a.std() > 20, f.name


def test_refuses_a_folder_that_already_holds_files(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "old.jpeg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already holds files"):
        generate(tmp_path / "raw", SyntheticConfig(**SMALL))
