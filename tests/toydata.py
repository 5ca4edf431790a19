"""The one toy-data helper of the tests (not a test module): a learnable task, its cache on disk, a card.

    x, y = toy(40, seed=0)                       # uint8 (40, 20, 20); class 1 carries a bright square
    write_cache(tmp_path / "cache", {"train": toy(24, 0), "val": toy(10, 1), "test": toy(6, 2)})
    card = card_for(model, threshold=0.3)        # a ModelCard with neutral defaults
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import CLASSES


def toy(n: int, seed: int, size: int = 20, positive: float = 0.7, balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, size, size), int64 labels); about ``positive`` of them class 1 (exactly half
    with ``balanced``, alternating), both classes present. Learnable in a few steps."""
    rng = np.random.default_rng(seed)
    if balanced:
        y = np.tile([0, 1], n // 2 + 1)[:n].astype(np.int64)
    else:
        y = (rng.random(n) < positive).astype(np.int64)
        y[:2] = [0, 1]
    x = rng.integers(0, 80, (n, size, size)).astype(np.uint8)
    x[y == 1, size // 5: size * 7 // 10, size * 3 // 10: size * 8 // 10] = 220
    return x, y


def write_cache(root: Path, splits: dict, data_version: str = "test-dv") -> Path:
    """The preprocess stage's layout: {split}_images.npy uint8 (N, S, S), {split}_labels.npy, {split}.csv, info.json."""
    root.mkdir(parents=True, exist_ok=True)
    counts, size = {}, None
    for s, (x, y) in splits.items():
        size = int(x.shape[-1])
        np.save(root / f"{s}_images.npy", x)
        np.save(root / f"{s}_labels.npy", y)
        pd.DataFrame({"path": [f"{s}/{CLASSES[c]}/img{i}.jpeg" for i, c in enumerate(y)],
                      "label": [CLASSES[c] for c in y], "patient_id": [f"p{i}" for i in range(len(y))]}
                     ).to_csv(root / f"{s}.csv", index=False)
        counts[s] = {"total": int(len(y))}
    (root / "info.json").write_text(json.dumps({"cache_size": size, "resize": "stretch", "classes": list(CLASSES),
                                                "counts": counts, "data_version": data_version}))
    return root


def card_for(model, **fields):
    """A ModelCard for ``model`` (built with cxr.models.build_model) with neutral defaults; ``fields`` override."""
    from cxr.checkpoint import ModelCard
    from cxr.config import AugmentConfig

    base = dict(arch=model.arch, cache_size=20, cache_resize="stretch", image_size=model.arch["image_size"],
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), threshold=0.5, threshold_method="youden",
                data_version="test", train_params={}, augment=asdict(AugmentConfig()), best_epoch=1, val_auc=0.5,
                val_loss=0.7, val_acc=0.5, epochs_run=1, stopped_early=False)
    base.update(fields)
    return ModelCard(**base)
