"""Augmentation alone, on cached 256 px uint8 images to 224 px: torchvision v2 per image vs BatchAugment.

    .venv/bin/python benchmarks/augment.py [--batches 8] [--batch-size 32]

per-image: ``cxr.data.augment.reference_transforms`` (the reference table as torchvision v2 transforms)
    on one (1, 256, 256) uint8 tensor at a time, then normalised;
BatchAugment: the project's batched warp + ``Normalize``, a batch at a time.
The two alternate batch by batch; synthetic image content (speed does not depend on it).
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import IMAGENET_MEAN, IMAGENET_STD, print_header


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="unused (synthetic images); accepted for run_all.py")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    print_header(f"augment: reference table, 256 -> 224 px, batch {args.batch_size}")

    from cxr.config import AugmentConfig
    from cxr.data.augment import BatchAugment, Normalize, reference_transforms

    cfg = AugmentConfig()
    x = torch.randint(
        0, 256, (args.batch_size, 1, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    per_image, norm = reference_transforms(cfg, 224), Normalize(IMAGENET_MEAN, IMAGENET_STD)
    cur = BatchAugment(cfg, 224)
    gen = torch.Generator().manual_seed(0)
    sides = {
        "per-image v2": lambda: norm(torch.stack([per_image(img) for img in x])),
        "BatchAugment": lambda: norm(cur(x, gen)),
    }
    secs = dict.fromkeys(sides, 0.0)
    for f in sides.values():
        f()  # warm-up
    for _ in range(args.batches):
        for name, f in sides.items():
            t0 = time.perf_counter()
            f()
            secs[name] += time.perf_counter() - t0
    n = args.batches * args.batch_size
    rates = {k: n / s for k, s in secs.items()}
    for k, r in rates.items():
        print(f"{k:<14} {r:9.1f} images/s")
    print(f"ratio      BatchAugment / per-image v2 {rates['BatchAugment'] / rates['per-image v2']:6.2f}x")
    return rates


if __name__ == "__main__":
    main()
