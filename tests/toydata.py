"""A learnable toy task for training tests: class 1 carries a bright square (not a test module)."""

from __future__ import annotations

import numpy as np


def toy(n: int, seed: int, size: int = 20, positive: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, size, size), int64 labels); about ``positive`` of them class 1, both classes present."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive).astype(np.int64)
    y[:2] = [0, 1]
    x = rng.integers(0, 80, (n, size, size)).astype(np.uint8)
    x[y == 1, size // 5: size * 7 // 10, size * 3 // 10: size * 8 // 10] = 220
    return x, y


def card_for(model, **fields):
    """A ModelCard for ``model`` (built with cxr.models.build_model) with neutral defaults; ``fields`` override."""
    from cxr.checkpoint import ModelCard
    from cxr.config import AugmentConfig
    from dataclasses import asdict

    base = dict(arch=model.arch, cache_size=20, cache_resize="stretch", image_size=model.arch["image_size"],
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), threshold=0.5, threshold_method="youden",
                data_version="test", train_params={}, augment=asdict(AugmentConfig()), best_epoch=1, val_auc=0.5,
                val_loss=0.7, val_acc=0.5, epochs_run=1, stopped_early=False)
    base.update(fields)
    return ModelCard(**base)
