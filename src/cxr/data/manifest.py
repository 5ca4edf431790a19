"""The manifest of usable images, patient-level splits and the quarantine report (`split` stage).

Run by ``dvc repro split``, i.e.::

    python src/split.py --params params.yaml --raw data/raw --manifest data/manifest.csv \
        --quarantine data/quarantine.csv --metrics metrics/data.json

Input is the canonical tree ``raw/{train,val,test}/{NORMAL,PNEUMONIA}/**`` written by ``fetch``.
Output (:func:`build_manifest`) is one row per usable image with the columns of
:data:`MANIFEST_COLUMNS`:

- ``path``: relative to the raw root, posix (``train/NORMAL/IM-0115-0001.jpeg``);
- ``label``: the class folder; ``source_split``: the official folder it came from;
- ``patient_id``: the patient *key* ``<space>/<id>`` (``train/person1180``). Person numbers restart
  between the official train and test folders, so the id alone is not unique; the official val
  shares train's key space when it is merged into train. Group by this column, never by the bare id.
- ``split``: the split this pipeline assigns (train, val, test);
- ``sha256``, ``width``, ``height``, ``mode``: what full verification found.

Every file is hashed and fully decoded (JPEG truncation is still detected in draft mode, which
decodes at 1/8 scale and is ~1.5x faster per full-resolution image). Files that cannot be used go
to the quarantine table with a reason and never stop the stage.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from tabulate import tabulate

from cxr import CLASSES, SPLITS
from cxr.config import SplitConfig
from cxr.data import SKIPPED_REPORT, is_junk
from cxr.data.checks import check_files
from cxr.files import csv_text, write_csv

MANIFEST_COLUMNS = ["path", "label", "patient_id", "source_split", "split", "sha256", "width", "height", "mode"]
QUARANTINE_COLUMNS = ["path", "reason", "detail"]

# Quarantine reasons beyond the file checks' (cxr.data.checks): stable codes; the detail column says more.
CONFLICTING = "conflicting_labels"


# IM-0115-0001, NORMAL2-IM-0381-0001(-0002): the patient is the IM number with its prefix.
_IM_RE = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:[-_.]|$)", re.IGNORECASE)
# person1180_bacteria_3125, person12_virus_46: the patient is personNNN.
_PERSON_RE = re.compile(r"^(person\d+)(?:[_.-]|$)", re.IGNORECASE)

# Held-out splits win a duplicate: its copy is removed from the more "training" side.
_KEEP_PRIORITY = {"test": 0, "val": 1, "train": 2}


class ManifestError(ValueError):
    """The raw tree cannot give a usable manifest (missing classes, no images)."""


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
# Scanning and verification
# --------------------------------------------------------------------------------------------


def scan_tree(raw_dir: str | Path) -> list[tuple[str, str, str]]:
    """Every candidate file under ``raw/{train,val,test}/{NORMAL,PNEUMONIA}`` as (path, source_split, label).

    Paths are raw-relative posix strings, sorted. Only operating-system junk (``.DS_Store``, ``._*``,
    ``__MACOSX``: :func:`cxr.data.is_junk`, the rule fetch applies) is skipped; any other
    file, hidden or not, is verified and then used or quarantined.
    Raises ManifestError when the raw folder is missing or holds no candidate file.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise ManifestError(f"raw data folder not found: {raw}. Run `dvc repro fetch` first (or pass --raw).")
    found: list[tuple[str, str, str]] = []
    for split in SPLITS:
        for label in CLASSES:
            class_dir = raw / split / label
            if not class_dir.is_dir():
                continue
            # followlinks: the real-data tests and local sources may link class folders in.
            for root, dirs, files in os.walk(class_dir, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not is_junk(d))
                for name in files:
                    if is_junk(name):
                        continue
                    rel = (Path(root) / name).relative_to(raw).as_posix()
                    found.append((rel, split, label))
    if not found:
        raise ManifestError(
            f"no image files found in {raw}: expected {raw}/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/<images>, "
            f"found {_describe_tree(raw)}. Run `dvc repro fetch` (check params.yaml data.source/data.path)."
        )
    return sorted(found)


def _describe_tree(raw: Path, limit: int = 6) -> str:
    entries = []
    for p in sorted(raw.iterdir()):
        if p.is_dir():
            children = sorted(c.name for c in p.iterdir())[:4]
            entries.append(f"{p.name}/ [{', '.join(children)}]" if children else f"{p.name}/ (empty)")
        else:
            entries.append(p.name)
        if len(entries) >= limit:
            entries.append("...")
            break
    return "top-level entries: " + ("; ".join(entries) if entries else "none (empty folder)")


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


# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------


def verify_tree(
    raw_dir: str | Path, candidates: list[tuple[str, str, str]], cfg: SplitConfig, progress: bool = True
) -> tuple[pd.DataFrame, list[dict]]:
    """Verify :func:`scan_tree`'s candidates: the usable images (MANIFEST_COLUMNS, ``split`` not yet drawn) and
    the quarantine rows (unusable files, what fetch did not import, identical bytes under both labels)."""
    checks = check_files(
        raw_dir, [c[0] for c in candidates], cfg.max_pixels, cfg.workers, progress, plausibility=cfg.plausibility
    )
    rows, bad = [], read_skipped(raw_dir)  # what fetch did not import (links, special files) is reported too
    for (path, source_split, label), chk in zip(candidates, checks):
        if chk.reason is not None:
            bad.append({"path": path, "reason": chk.reason, "detail": chk.detail})
            continue
        rows.append(
            {
                "path": path,
                "label": label,
                "patient_id": patient_key(path, cfg.merge_official_val),
                "source_split": source_split,
                "split": "",
                "sha256": chk.sha256,
                "width": chk.width,
                "height": chk.height,
                "mode": chk.mode,
            }
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)

    # Identical bytes under both labels: no way to know which label is right, so use neither.
    n_labels = manifest.groupby("sha256")["label"].transform("nunique")
    conflicting = manifest[n_labels > 1]
    for path, sha in zip(conflicting["path"], conflicting["sha256"]):
        bad.append(
            {
                "path": path,
                "reason": CONFLICTING,
                "detail": f"identical bytes (sha256 {sha[:12]}) also filed under the other class",
            }
        )
    return manifest[n_labels <= 1], bad


@dataclass
class SplitResult:
    manifest: pd.DataFrame  # MANIFEST_COLUMNS, one row per usable image, sorted by path
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS
    metrics: dict = field(default_factory=dict)  # metrics/data.json


def build_manifest(raw_dir: str | Path, cfg: SplitConfig, progress: bool = True) -> SplitResult:
    """Scan, verify, split and deduplicate ``raw_dir`` with the ``split`` section's settings.

    Raises ManifestError when there is nothing to split or a class has no usable training image;
    bad files never raise, they are quarantined.
    """
    candidates = scan_tree(raw_dir)
    manifest, bad = verify_tree(raw_dir, candidates, cfg, progress)
    _require_both_classes(manifest, raw_dir, cfg.merge_official_val, len(candidates), bad)

    manifest = manifest.assign(
        split=assign_splits(manifest, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.merge_official_val)
    )
    manifest, dup = drop_duplicates(manifest)
    _require_every_split(manifest, len(candidates), bad, cfg)
    manifest = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    quarantine = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    return SplitResult(manifest, quarantine, split_metrics(manifest, quarantine, dup, scanned=len(candidates)))


def _require_both_classes(manifest: pd.DataFrame, raw_dir, merge_val: bool, scanned: int, bad: list) -> None:
    pool_src = ["train", "val"] if merge_val else ["train"]
    pool = manifest[manifest["source_split"].isin(pool_src)]
    counts = {c: int((pool["label"] == c).sum()) for c in CLASSES}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        where = " + ".join(f"{raw_dir}/{s}" for s in pool_src)
        raise ManifestError(
            f"no usable {' or '.join(missing)} training images in {where}: found {counts} usable "
            f"({scanned} files scanned, {len(bad)} quarantined); expected images of both classes in "
            f"{raw_dir}/train/{{NORMAL,PNEUMONIA}}/. Check the fetched tree (`dvc repro fetch`) "
            "and the quarantine reasons."
        )


def read_skipped(raw_dir) -> list[dict]:
    """Rows of fetch's ``skipped.csv`` (entries not imported: links, FIFOs, devices), for the quarantine report."""
    path = Path(raw_dir) / SKIPPED_REPORT
    if not path.is_file():
        return []
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [{c: row.get(c, "") for c in QUARANTINE_COLUMNS} for row in table.to_dict(orient="records")]


def _require_every_split(manifest: pd.DataFrame, scanned: int, bad: list, cfg: SplitConfig) -> None:
    """Train, val and test each need images, val and test of both classes: an empty or one-class split
    passes here silently and breaks train (no validation AUC, no threshold) or evaluate later."""
    counts = {s: {c: int(((manifest["split"] == s) & (manifest["label"] == c)).sum()) for c in CLASSES} for s in SPLITS}
    # split.test_fraction: 0 with no official test/ asks for no test split: then none is required.
    wanted = [s for s in SPLITS if s != "test" or cfg.test_fraction > 0 or (manifest["source_split"] == "test").any()]
    short = [s for s in wanted if sum(counts[s].values()) == 0 or (s != "train" and min(counts[s].values()) == 0)]
    if short:
        shown = "; ".join(f"{s}: {counts[s]['NORMAL']} NORMAL, {counts[s]['PNEUMONIA']} PNEUMONIA" for s in SPLITS)
        raise ManifestError(
            f"the dataset is too small to split: {shown} ({scanned} files scanned, {len(bad)} quarantined). "
            f"{' and '.join(short)} need{'s' if len(short) == 1 else ''} images of both classes (train at least one "
            f"image). Add images (at least 3 patients per class in train, or an official test/ with both "
            f"classes), or raise split.val_fraction / split.test_fraction (now {cfg.val_fraction} / "
            f"{cfg.test_fraction})"
        )


def split_metrics(manifest: pd.DataFrame, quarantine: pd.DataFrame, duplicates: dict, scanned: int) -> dict:
    """metrics/data.json: images per split and class, patients, leakage and data-quality counts."""
    images = {}
    patients = {}
    for s in SPLITS:
        part = manifest[manifest["split"] == s]
        counts = {c: int((part["label"] == c).sum()) for c in CLASSES}
        counts["total"] = int(len(part))
        images[s] = counts
        patients[s] = int(part["patient_id"].nunique())
    reasons = quarantine["reason"].value_counts().sort_index() if len(quarantine) else pd.Series(dtype=int)
    return {
        "images": images,
        "patients": patients,
        "shared_patients": shared_patients(manifest),
        "duplicates_removed": int(duplicates["removed"]),
        "duplicates_cross_split": int(duplicates["cross_split"]),
        "duplicates_within_test_kept": int(duplicates.get("within_test_kept", 0)),
        "quarantined": int(len(quarantine)),
        "quarantine_reasons": {str(k): int(v) for k, v in reasons.items()},
        "files_scanned": int(scanned),
    }


def summary_table(metrics: dict) -> str:
    """A short plain-text table of :func:`split_metrics` for the console."""
    rows = [
        [s, *(metrics["images"][s][k] for k in ("NORMAL", "PNEUMONIA", "total")), metrics["patients"][s]]
        for s in SPLITS
    ]
    lines = [tabulate(rows, headers=["split", "NORMAL", "PNEUMONIA", "total", "patients"], tablefmt="plain")]
    lines.append(
        f"shared patients: {metrics['shared_patients']}   duplicates removed: {metrics['duplicates_removed']} "
        f"({metrics['duplicates_cross_split']} across splits; "
        f"{metrics.get('duplicates_within_test_kept', 0)} repeats within the official test kept)   "
        f"quarantined: {metrics['quarantined']}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def manifest_csv_bytes(manifest: pd.DataFrame) -> bytes:
    """The exact bytes :func:`write_manifest` writes (the cache's data_version hashes them)."""
    return csv_text(manifest[MANIFEST_COLUMNS]).encode("utf-8")


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(manifest_csv_bytes(manifest))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest CSV with its column types; ids such as ``NA`` stay strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}. Run `dvc repro split` first.")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; expected {MANIFEST_COLUMNS}. Rerun `dvc repro split`."
        )
    return df.astype({"width": int, "height": int})[MANIFEST_COLUMNS]


def write_quarantine(quarantine: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(quarantine[QUARANTINE_COLUMNS], path)
