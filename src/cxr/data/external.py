"""External validation sets (stage ``external``): taken in, verified and decoded like the splits, never chosen on.

    python src/external.py --params params.yaml --manifest data/manifest.csv --cache data/cache \
        --out data/external --metrics metrics/external.json

Each named set of ``external.sets`` (a folder or archive holding NORMAL/ and PNEUMONIA/, or
``synthetic``) goes through what the run's own data went through: fetch's intake (no link followed,
no special file opened, archive limits), split's verification (pixel limit, plausibility; bad files
quarantined), preprocess's decoding (the run's cache_size and resize). Layout::

    data/external/<name>/raw/test/<CLASS>/...   the set's images (hardlinked, copied or extracted)
    data/external/<name>/test_images.npy ...    a cache (cxr.data.cache layout) whose test split is the set
    data/external/<name>/quarantine.csv         files not used, and why
    data/external/index.json                    name -> counts and data_version (written last)

A set is refused when a picture in it is one of the run's own (train, val or test): the same bytes,
or a thumbnail correlating at least ``external.max_similarity`` with one (a re-encoded or resized
copy), and with it every image of the same child in the set. Person numbers restart between the
official Kermany splits, so file names alone cannot tell two children apart: content does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxr import CLASSES
from cxr.config import ConfigError
from cxr.data.cache import build_cache, load_info, load_split
from cxr.data.config import (
    SYNTHETIC_SET,
    DataConfig,
    ExternalConfig,
    PreprocessConfig,
    SplitConfig,
    SyntheticConfig,
)
from cxr.data.intake import import_external, import_tree
from cxr.data.layout import Layout, class_dirs
from cxr.data.manifest import QUARANTINE_COLUMNS, read_manifest, scan_tree, verify_tree
from cxr.data.sources import resolve_path
from cxr.files import write_csv

INDEX_FILE = "index.json"
OVERLAP_FILE = "overlap.csv"
THUMB_SIDE = 32  # the near-duplicate test compares 32x32 thumbnails
OVERLAP_COLUMNS = ("path", "patient_id", "reason", "match_split", "match_path", "similarity")


class ExternalError(ValueError):
    """An external set cannot be used: empty, one class only, or holding the run's own pictures."""


@dataclass
class ExternalSet:
    name: str
    manifest: pd.DataFrame  # MANIFEST_COLUMNS, split "test"
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS
    notes: list[str] = field(default_factory=list)
    max_similarity: float = float("nan")  # the closest any of its images comes to one of the run's


def take_in(name: str, spec: str, raw: Path, cfg: ExternalConfig, data: DataConfig, base_dir: Path, progress: bool):
    """Bring set ``name`` into ``raw/test/<CLASS>/``; returns the notes for the log."""
    notes: list[str] = []
    if spec == SYNTHETIC_SET:
        from cxr.data.synthetic import generate

        s = cfg.synthetic
        raw.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-synthetic-", dir=raw.parent))
        try:
            base = data.synthetic
            cohort = SyntheticConfig(
                patients=s.patients,
                max_images_per_patient=base.max_images_per_patient,
                pneumonia_ratio=s.pneumonia_ratio,
                min_size=base.min_size,
                max_size=base.max_size,
                official_test_fraction=0.0,
                official_val_images=0,
                seed=s.seed,
            )
            generate(staging, cohort)  # every child in train/: all of it is the set
            import_tree(Layout(staging / "train", {"test": class_dirs(staging / "train")}), raw, mode="move")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        notes.append(f"synthetic cohort: {s.patients} children, seed {s.seed}, PNEUMONIA:NORMAL {s.pneumonia_ratio}")
        return notes
    src = resolve_path(spec, base_dir)
    notes.append(f"source: {src}")
    import_external(src, raw, notes, link=cfg.link, progress=progress, limits=data.archive)
    return notes


def verify(name: str, raw: Path, split: SplitConfig, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The set's manifest (split ``test``) and quarantine, with split's checks."""
    candidates = scan_tree(raw)
    manifest, bad = verify_tree(raw, candidates, split, progress)
    manifest = manifest.assign(split="test")
    quarantine = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS).sort_values("path", kind="stable")
    counts = {c: int((manifest["label"] == c).sum()) for c in CLASSES}
    if min(counts.values()) == 0:
        raise ExternalError(
            f"external set {name!r}: usable images per class {counts} ({len(candidates)} files, {len(bad)} "
            "quarantined): ROC-AUC, sensitivity and specificity need both classes. Add images to the empty "
            f"class folder, or remove {name} from external.sets"
        )
    return manifest.reset_index(drop=True), quarantine.reset_index(drop=True)


def thumbnails(images: np.ndarray, chunk: int = 1024) -> torch.Tensor:
    """(N, T*T) zero-mean, unit-norm float32 thumbnails of uint8 (N, S, S) images: dot products are correlations."""
    out = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[i : i + chunk])).float()[:, None]
        side = min(THUMB_SIDE, x.shape[-1])
        v = F.interpolate(x, size=(side, side), mode="area").flatten(1)
        v = v - v.mean(dim=1, keepdim=True)
        out.append(v / v.norm(dim=1, keepdim=True).clamp_min(1e-6))
    return torch.cat(out) if out else torch.zeros(0, THUMB_SIDE * THUMB_SIDE)


def find_overlap(
    external: pd.DataFrame, ext_thumbs: torch.Tensor, run: pd.DataFrame, run_thumbs: torch.Tensor, max_similarity: float
) -> tuple[pd.DataFrame, float]:
    """Images of ``external`` that are the run's own pictures, and every image of the same children.

    ``run``: the run's manifest rows in the order of ``run_thumbs``. Returns the overlap table
    (OVERLAP_COLUMNS) and the highest similarity any external image has with any of the run's.
    """
    if len(run_thumbs) == 0 or len(ext_thumbs) == 0:
        return pd.DataFrame(columns=OVERLAP_COLUMNS), float("nan")
    sim = ext_thumbs @ run_thumbs.T
    best_t, where_t = sim.max(dim=1)
    best, where = best_t.numpy().astype(float), where_t.numpy()
    by_sha = dict(zip(run["sha256"], zip(run["split"], run["path"])))
    rows = []
    for i, (path, pid, sha) in enumerate(zip(external["path"], external["patient_id"], external["sha256"])):
        if sha in by_sha:
            match_split, match_path = by_sha[sha]
            rows.append((path, pid, "same_bytes", match_split, match_path, 1.0))
        elif best[i] >= max_similarity:
            j = where[i]
            rows.append((path, pid, "near_duplicate", run["split"].iloc[j], run["path"].iloc[j], round(best[i], 6)))
    matched = {r[1] for r in rows}
    seen = {r[0] for r in rows}
    for path, pid in zip(external["path"], external["patient_id"]):
        if pid in matched and path not in seen:
            rows.append((path, pid, "same_child_as_a_match", "", "", float("nan")))
    table = pd.DataFrame(rows, columns=OVERLAP_COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)
    return table, float(best.max())


def run_thumbnails(cache_dir: Path, manifest: pd.DataFrame) -> tuple[pd.DataFrame, torch.Tensor]:
    """Thumbnails of every image of the run's cache (all splits), with their manifest rows."""
    rows, thumbs = [], []
    by_path = manifest.set_index("path")
    for split in ("train", "val", "test"):
        part = load_split(cache_dir, split)
        thumbs.append(thumbnails(part.images))
        rows.append(by_path.loc[part.paths].reset_index()[["path", "split", "sha256"]])
    return pd.concat(rows, ignore_index=True), torch.cat(thumbs)


def refusal(name: str, overlap: pd.DataFrame, report: Path) -> ExternalError:
    first = overlap[overlap["reason"] != "same_child_as_a_match"].head(3)
    shown = "; ".join(
        f"{r.path} is {r.match_split} image {r.match_path} ({r.reason.replace('_', ' ')}"
        + (f", similarity {r.similarity:.4f})" if r.reason == "near_duplicate" else ")")
        for r in first.itertuples()
    )
    splits = sorted(set(overlap["match_split"]) - {""})
    return ExternalError(
        f"external set {name!r}: {len(overlap)} image(s) of {overlap['patient_id'].nunique()} child(ren) are this "
        f"run's own data ({'/'.join(splits)}): {shown}. A child seen in training (or in the internal test) cannot "
        f"be in an external set. Every such image is listed in {report}; remove them from the set (or the set "
        "from external.sets) and rerun"
    )


def build_set(
    name: str,
    spec: str,
    out: Path,
    cfg: ExternalConfig,
    data: DataConfig,
    split: SplitConfig,
    preprocess: PreprocessConfig,
    run: tuple[pd.DataFrame, torch.Tensor],
    base_dir: Path,
    progress: bool = True,
) -> ExternalSet:
    """Take in, verify, check against the run's data and decode one set into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    raw = out / "raw"
    notes = take_in(name, spec, raw, cfg, data, base_dir, progress)
    manifest, quarantine = verify(name, raw, split, progress)
    write_csv(quarantine, out / "quarantine.csv")
    info = build_cache(manifest, raw, out, preprocess, progress=progress)
    ext_thumbs = thumbnails(load_split(out, "test").images)
    overlap, closest = find_overlap(manifest, ext_thumbs, run[0], run[1], cfg.max_similarity)
    if len(overlap):
        write_csv(overlap, out / OVERLAP_FILE)
        (out / "info.json").unlink()  # not a usable cache
        raise refusal(name, overlap, out / OVERLAP_FILE)
    notes.append(f"{info['counts']['test']['total']} images decoded at {preprocess.cache_size} px")
    return ExternalSet(name, manifest, quarantine, notes, closest)


def set_metrics(s: ExternalSet, spec: str, n_run: int) -> dict:
    """metrics/external.json entry: what the set is, what was used, how close it came to the run's data."""
    m = s.manifest
    return {
        "source": spec,
        "images": {**{c: int((m["label"] == c).sum()) for c in CLASSES}, "total": int(len(m))},
        "patients": int(m["patient_id"].nunique()),
        "quarantined": int(len(s.quarantine)),
        "duplicates_within": int(m["sha256"].duplicated().sum()),
        "checked_against": n_run,
        "closest_similarity": None if np.isnan(s.max_similarity) else round(s.max_similarity, 4),
    }


def build_all(
    cfg: ExternalConfig,
    data: DataConfig,
    split: SplitConfig,
    manifest_path: Path,
    cache_dir: Path,
    out_dir: Path,
    base_dir: Path = Path("."),
    progress: bool = True,
) -> dict:
    """Every set of ``cfg.sets`` into ``out_dir`` (replaced); returns metrics/external.json's content."""
    check_same_kind(cfg, data)
    info = load_info(cache_dir)
    preprocess = PreprocessConfig(cache_size=info["cache_size"], resize=info["resize"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    run = run_thumbnails(cache_dir, read_manifest(manifest_path))
    metrics, index = {}, {}
    for name, spec in cfg.sets.items():
        s = build_set(name, spec, out_dir / name, cfg, data, split, preprocess, run, base_dir, progress)
        for note in s.notes:
            print(f"[external] {name}: {note}")
        metrics[name] = set_metrics(s, spec, len(run[0]))
        index[name] = {**metrics[name]["images"], "data_version": load_info(out_dir / name)["data_version"]}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return metrics


def check_same_kind(cfg: ExternalConfig, data: DataConfig) -> None:
    """A synthetic cohort is an external set only for models trained on synthetic data: real
    radiographs' models scored on drawings read as an external failure that is none."""
    drawn = [name for name, spec in cfg.sets.items() if spec == SYNTHETIC_SET]
    if drawn and data.source != SYNTHETIC_SET:
        raise ConfigError(
            f"external.sets: {', '.join(drawn)} {'is' if len(drawn) == 1 else 'are'} synthetic, but the run trains on "
            f"data.source: {data.source}: a model of real radiographs would be scored on drawings. Remove "
            + " ".join(f"-S '~external.sets.{n}'" for n in drawn)
            + " (make real does), or give real external folders (make real EXTERNAL=...)"
        )


def load_index(out_dir: str | Path) -> dict:
    """data/external/index.json: {name: counts and data_version}; ``{}`` where the stage configured no set."""
    path = Path(out_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro external` (it writes it, empty without sets)")
    return json.loads(path.read_text())
