"""Who each image belongs to, and patient-level splits: no child's radiographs on two sides of a split.

    patient_key("train/PNEUMONIA/person12_virus_46.jpeg")      # "train/person12"
    manifest["split"] = assign_splits(manifest, val_fraction=0.15, test_fraction=0.15, seed=42)
    manifest, duplicates = drop_duplicates(manifest)          # one copy of each image, held-out splits first

Used by the ``split`` stage (:mod:`cxr.data.manifest`) and checked against by the external sets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

# IM-0115-0001, NORMAL2-IM-0381-0001(-0002): the patient is the IM number with its prefix.
_IM_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:[-_.]|$)", re.IGNORECASE)
# person1180_bacteria_3125, person12_virus_46: the patient is personNNN.
_PERSON_RE = re.compile(r"^(person\d+)(?:[_.-]|$)", re.IGNORECASE)

# Held-out splits win a duplicate: its copy is removed from the more "training" side.
_KEEP_PRIORITY = {"test": 0, "val": 1, "train": 2}


# --------------------------------------------------------------------------------------------
# Patient ids
# --------------------------------------------------------------------------------------------


def parse_patient_id(filename: str) -> Optional[str]:
    """The patient id in a Kermany file name, or None when the name carries none.

    ``IM-0115-0001.jpeg`` -> ``IM-0115``; ``NORMAL2-IM-0381-0001.jpeg`` -> ``NORMAL2-IM-0381``;
    ``person1180_bacteria_3125.jpeg`` -> ``person1180``.
    """
    stem = Path(filename).name
    for pattern in (_IM_RE, _PERSON_RE):
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return None


def patient_key(path: str, merge_official_val: bool = True) -> str:
    """The patient key ``<space>/<id>`` of a raw-relative path ``<split>/<CLASS>/.../<file>``.

    The space is the official folder (person numbers restart between train and test); val joins
    train's space when merged. A name without an id is its own patient, keyed by its path.
    """
    parts = Path(path).parts
    space = parts[0]
    if space == "val" and merge_official_val:
        space = "train"
    pid = parse_patient_id(parts[-1])
    if pid is None:
        # Class folder included: the same name under NORMAL and PNEUMONIA is two unknown people.
        pid = Path(*parts[1:]).with_suffix("").as_posix()
    return f"{space}/{pid}"


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _draw_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) of ``n`` patients; at least one each when there are patients to spare."""
    n_test = _round_half_up(test_fraction * n)
    n_val = _round_half_up(val_fraction * n)
    wanted = int(val_fraction > 0) + int(test_fraction > 0)
    if n > wanted:  # enough that train keeps one: tiny classes still reach every split
        n_val = max(n_val, int(val_fraction > 0))
        n_test = max(n_test, int(test_fraction > 0))
    # Train keeps at least one patient of the class.
    while n_val + n_test >= n and n_val + n_test > 0:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def assign_splits(
    images: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, merge_official_val: bool = True
) -> pd.Series:
    """The split of every image (index-aligned Series), drawn per patient and stratified by label.

    ``images`` needs ``patient_id`` (keys), ``label`` and ``source_split``. The official test is
    kept when it holds images; otherwise ``test_fraction`` of the train patients of each class
    become test. ``val_fraction`` of the train patients of each class become val. The official
    val joins the train pool when ``merge_official_val``, else it stays val (in addition to the
    drawn patients). A patient with images of both classes counts as PNEUMONIA for stratification.
    Patients are sorted, then shuffled with ``seed``: the same seed always gives the same split.
    """
    split = pd.Series(pd.NA, index=images.index, dtype="object")
    src = images["source_split"]
    has_test = bool((src == "test").any())
    split[src == "test"] = "test"
    if not merge_official_val:
        split[src == "val"] = "val"
    pool = split.isna()
    pool_images = images[pool]
    # Patient label: PNEUMONIA wins, so a sick child is never counted among the healthy ones.
    patient_label = (pool_images["label"] == "PNEUMONIA").groupby(pool_images["patient_id"]).any()
    rng = np.random.default_rng(seed)
    where: dict[str, str] = {}
    for label_is_pneumonia in (False, True):  # fixed order: NORMAL then PNEUMONIA draws
        patients = np.array(sorted(patient_label.index[patient_label.values == label_is_pneumonia]), dtype=object)
        if len(patients) == 0:
            continue
        patients = patients[rng.permutation(len(patients))]
        n_val, n_test = _draw_counts(len(patients), val_fraction, 0.0 if has_test else test_fraction)
        for p in patients[:n_test]:
            where[p] = "test"
        for p in patients[n_test : n_test + n_val]:
            where[p] = "val"
        for p in patients[n_test + n_val :]:
            where[p] = "train"
    split[pool] = pool_images["patient_id"].map(where)
    return split


def drop_duplicates(manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Keep one copy of each sha256, in the most held-out split (test > val > train), first path;
    but never drop an image of the official test split (its 624 images stay comparable with the
    published results): repeats within it are kept and counted.

    Returns the kept rows (original order) and counts: ``removed`` (all copies dropped),
    ``cross_split`` (of which a copy sat in a more held-out split: leakage avoided),
    ``within_test_kept`` (official test images whose bytes repeat another official test image).
    """
    if manifest.empty:
        return manifest, {"removed": 0, "cross_split": 0, "within_test_kept": 0}
    prio = manifest["split"].map(_KEEP_PRIORITY)
    order = manifest.assign(_prio=prio).sort_values(["sha256", "_prio", "path"], kind="stable")
    first = ~order["sha256"].duplicated(keep="first")
    official_test = (order["source_split"] == "test") & (order["split"] == "test")
    keep = first | official_test  # an official test copy sorts first, so the rest of its group goes
    kept_idx = order.index[keep]
    dropped = order[~keep]
    kept_split = order[first].set_index("sha256")["split"]
    cross = int((dropped["split"].values != dropped["sha256"].map(kept_split).values).sum())
    return manifest.loc[manifest.index.isin(kept_idx)], {
        "removed": int(len(dropped)),
        "cross_split": cross,
        "within_test_kept": int((official_test & ~first).sum()),
    }


def shared_patients(manifest: pd.DataFrame) -> int:
    """Number of patient keys that appear in more than one split (must be 0)."""
    if manifest.empty:
        return 0
    return int((manifest.groupby("patient_id")["split"].nunique() > 1).sum())
