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
  shares train's key space when it is merged into train. Group by this column, never by the bare id
  (the keys, the splits and the duplicates: :mod:`cxr.data.patients`).
- ``split``: the split this pipeline assigns (train, val, test);
- ``sha256``, ``width``, ``height``, ``mode``: what full verification found.

Every file is hashed and fully decoded (JPEG truncation is still detected in draft mode, which
decodes at 1/8 scale and is ~1.5x faster per full-resolution image). Files that cannot be used go
to the quarantine table with a reason and never stop the stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from cxr import CLASSES, SPLITS
from cxr.data import SKIPPED_REPORT, is_junk
from cxr.data.checks import check_files
from cxr.data.config import SplitConfig
from cxr.data.patients import assign_splits, drop_duplicates, patient_key, shared_patients
from cxr.files import csv_text, write_csv

MANIFEST_COLUMNS = ["path", "label", "patient_id", "source_split", "split", "sha256", "width", "height", "mode"]
QUARANTINE_COLUMNS = ["path", "reason", "detail"]

# Quarantine reasons beyond the file checks' (cxr.data.checks): stable codes; the detail column says more.
CONFLICTING = "conflicting_labels"


class ManifestError(ValueError):
    """The raw tree cannot give a usable manifest (missing classes, no images)."""


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
