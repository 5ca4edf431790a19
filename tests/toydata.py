"""The one toy-data helper of the tests (not a test module): a learnable task, its cache on disk, a card.

x, y = toy(40, seed=0)                       # uint8 (40, 20, 20); class 1 carries a bright square
write_cache(tmp_path / "cache", {"train": toy(24, 0), "val": toy(10, 1), "test": toy(6, 2)})
card = card_for(model, threshold=0.3)        # a ModelCard with neutral defaults
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import CLASSES

# A 1-layer ViT through the real builder path (build_model("vit", image_size=32, **TINY_VIT)).
TINY_VIT = {
    "config": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "patch_size": 8,
    }
}


def toy(
    n: int, seed: int, size: int = 20, positive: float = 0.7, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, size, size), int64 labels); about ``positive`` of them class 1 (exactly half
    with ``balanced``, alternating), both classes present. Learnable in a few steps."""
    rng = np.random.default_rng(seed)
    if balanced:
        y = np.tile([0, 1], n // 2 + 1)[:n].astype(np.int64)
    else:
        y = (rng.random(n) < positive).astype(np.int64)
        y[:2] = [0, 1]
    x = rng.integers(0, 80, (n, size, size)).astype(np.uint8)
    x[y == 1, size // 5 : size * 7 // 10, size * 3 // 10 : size * 8 // 10] = 220
    return x, y


def write_cache(root: Path, splits: dict, data_version: str = "test-dv") -> Path:
    """The preprocess stage's layout: {split}_images.npy uint8 (N, S, S), {split}_labels.npy, {split}.csv, info.json."""
    root.mkdir(parents=True, exist_ok=True)
    counts, size = {}, None
    for s, (x, y) in splits.items():
        size = int(x.shape[-1])
        np.save(root / f"{s}_images.npy", x)
        np.save(root / f"{s}_labels.npy", y)
        pd.DataFrame(
            {
                "path": [f"{s}/{CLASSES[c]}/img{i}.jpeg" for i, c in enumerate(y)],
                "label": [CLASSES[c] for c in y],
                "patient_id": [f"p{i}" for i in range(len(y))],
            }
        ).to_csv(root / f"{s}.csv", index=False)
        counts[s] = {"total": int(len(y))}
    (root / "info.json").write_text(
        json.dumps(
            {
                "cache_size": size,
                "resize": "stretch",
                "classes": list(CLASSES),
                "counts": counts,
                "data_version": data_version,
            }
        )
    )
    return root


def card_for(model, **fields):
    """A ModelCard for ``model`` (built with cxr.models.build_model) with neutral defaults; ``fields`` override."""
    from cxr.checkpoint import ModelCard
    from cxr.config import AugmentConfig

    base = dict(
        arch=model.arch,
        cache_size=20,
        cache_resize="stretch",
        image_size=model.arch["image_size"],
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        threshold=0.5,
        threshold_method="youden",
        data_version="test",
        train_params={"augment": AugmentConfig().model_dump(mode="json")},
        best_epoch=1,
        val_auc=0.5,
        val_loss=0.7,
        val_acc=0.5,
        epochs_run=1,
        stopped_early=False,
    )
    base.update(fields)
    return ModelCard(**base)


def make_checkpoint(
    model_dir: Path,
    *,
    cache_size: int = 32,
    image_size: int = 24,
    resize: str | None = "stretch",
    threshold: float = 0.5,
    seed: int = 0,
    data_source=None,
    **card_fields,
) -> Path:
    """A tiny seeded `cnn` saved as the train stage saves it (random weights: no training needed);
    ``data_source`` (a cxr.checkpoint.DataSource): what its card says it was trained on (default: unknown);
    ``card_fields``: other card fields (temperature, refer_band, ...)."""
    import torch

    from cxr import checkpoint
    from cxr.models import build_model

    torch.manual_seed(seed)
    model = build_model("cnn", image_size=image_size)
    with torch.no_grad():  # a random CNN answers ~0.5 for everything: spread its outputs so labels differ
        model.classifier[-1].weight.mul_(40.0)
    extra = {**card_fields, **({} if data_source is None else {"data_source": data_source})}
    card = card_for(model, cache_size=cache_size, threshold=threshold, cache_resize=resize or "stretch", **extra)
    return checkpoint.save(model_dir, model, card)


RAMP16 = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 6 + 1000  # 1000 .. 3874: 12-bit range


def write_dicom(
    path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, list[int]] | None = None,
    preamble: bool = True,
    pixel_data: bool = True,
):
    """A minimal single-frame DICOM (Digital X-Ray storage) written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    if pixel_data:
        bits = bits_stored or (8 if arr.dtype == np.uint8 else 16)
        ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=bits)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0.0, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        from pydicom.sequence import Sequence

        n, first, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [n, first, 16]
        item.LUTData = np.asarray(data, dtype="<u2").tobytes()  # OW
        ds.VOILUTSequence = Sequence([item])
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.preamble = None
        ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def cells(markdown: str) -> str:
    """A markdown text with its tables' padding collapsed: `| 16    | 0.001 |` -> `| 16 | 0.001 |`, so
    tests read cells, not column widths."""
    return re.sub(r"(?<=\|) +| +(?=\|)", " ", markdown)


def write_predictions(folder: Path, model: str, sets: dict[str, tuple], threshold: float = 0.5) -> Path:
    """evaluate's per-image outputs of one model, written as src/evaluate.py writes them: ``sets`` maps
    "test" (predictions.csv) and each external set (external.csv, a ``set`` column) to (paths, labels 0/1,
    probabilities)."""
    from cxr.evaluation.evaluate import predictions_table
    from cxr.files import write_csv

    out = folder / model
    out.mkdir(parents=True, exist_ok=True)
    tables = {name: predictions_table(*rows, threshold) for name, rows in sets.items()}
    write_csv(tables.pop("test"), out / "predictions.csv")
    parts = [t.assign(set=name) for name, t in tables.items()]
    write_csv(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["set"]), out / "external.csv")
    return out
