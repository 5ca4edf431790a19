"""Training input pipeline: the seed notebook's loader vs ours, images/s and their ratio from one run.

    .venv/bin/python benchmarks/input_pipeline.py [--data DIR] [--workers 0] [--repeat 2] [--rounds 2]

reference: torchvision ``datasets.ImageFolder`` over the full-resolution JPEGs, PIL decode,
    Resize((224, 224)), RandomResizedCrop(224, scale=(0.8, 1)), RandomHorizontalFlip, RandomRotation(15),
    RandomAffine(0, translate=(0.1, 0.1)), ColorJitter(0.2, 0.2), ToTensor, Normalize (ImageNet), batch 32.
ours: the same files decoded once by ``cxr.data.cache.build_cache`` (cache_size 256, in a tmp dir),
    then the training input path of ``cxr.training.engine.train_one_epoch``: ``make_loader`` over the uint8
    memmap, ``BatchAugment`` (same table, drawn per image) to 224 px, ``Normalize`` to 3 channels.

Both draw from the same list (the files repeated ``--repeat`` times) with the same batch size and
worker count. With no workers the two sides alternate batch by batch (one reference batch, then
``--ours-per-ref`` of ours), so load from other processes on a shared machine hits both alike; with
workers, whose prefetching would run during the other side's turn, they alternate whole epochs.
The one-time cache build is printed separately: it is the ``preprocess`` stage, paid once per
dataset, not per epoch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    add_data_arg,
    build_cached,
    list_images,
    print_header,
    repeated,
    verdict,
)

TARGET = 20.0


def reference_loader(root: Path, repeat: int, batch_size: int, workers: int, seed: int):
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize((224, 224)),
            T.RandomResizedCrop(224, scale=(0.8, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15),
            T.RandomAffine(0, translate=(0.1, 0.1)),
            T.ColorJitter(brightness=0.2, contrast=0.2),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    ds = ConcatDataset([ds] * repeat) if repeat > 1 else ds
    return DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed)
    )


def endless(make_loader_for_epoch):
    """Batches of successive epochs, forever (a fresh loader, hence a fresh shuffle, per epoch)."""
    epoch = 0
    while True:
        yield from make_loader_for_epoch(epoch)
        epoch += 1


class Ours:
    """The engine's input path, exactly as ``train_one_epoch`` applies it (minus the model)."""

    def __init__(self, images, labels, batch_size: int, workers: int, seed: int):
        from cxr.config import AugmentConfig
        from cxr.data.augment import BatchAugment, Normalize

        self.images, self.labels = images, labels
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.augment = BatchAugment(AugmentConfig(), 224)
        self.prep = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.gen = torch.Generator().manual_seed(seed)
        self.times = {"load": 0.0, "augment": 0.0, "normalise": 0.0}
        self.batches = endless(self.loader)

    def loader(self, epoch: int):
        from cxr.training.loaders import make_loader

        return make_loader(
            self.images,
            self.labels,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed + epoch,
            num_workers=self.workers,
        )

    def step(self) -> int:
        """One batch through the whole input path; returns its size."""
        t0 = time.perf_counter()
        xb, yb = next(self.batches)
        t1 = time.perf_counter()
        x01 = self.augment(xb, self.gen)
        t2 = time.perf_counter()
        x = self.prep(x01)
        t3 = time.perf_counter()
        assert x.shape[1:] == (3, 224, 224)
        self.times["load"] += t1 - t0
        self.times["augment"] += t2 - t1
        self.times["normalise"] += t3 - t2
        return len(yb)


class Reference:
    def __init__(self, root: Path, repeat: int, batch_size: int, workers: int, seed: int):
        self.loader = reference_loader(root, repeat, batch_size, workers, seed)
        self.batches = endless(lambda _epoch: self.loader)

    def step(self) -> int:
        x, y = next(self.batches)
        assert x.shape[1:] == (3, 224, 224)
        return len(y)


def timed(side, batches: int) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        n += side.step()
    return n, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arg(ap)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides (default 0)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2, help="times the file list is repeated (default 2)")
    ap.add_argument(
        "--ref-batches", type=int, default=0, help="reference batches timed (default: one pass over the repeated list)"
    )
    ap.add_argument("--ours-per-ref", type=int, default=4, help="batches of ours after each reference batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    root, files = list_images(args.data)
    items = repeated(files, args.repeat)
    print_header(
        f"input_pipeline: training input, reference loader vs cached path "
        f"(224 px, batch {args.batch_size}, workers {args.workers})"
    )
    print(f"data: {root} ({len(files)} files x {args.repeat} = {len(items)} images per epoch)")

    from cxr.data.cache import load_split

    ref_batches = args.ref_batches or -(-len(items) // args.batch_size)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        build_s = build_cached(root, items, Path(tmp) / "cache", cache_size=256)
        print(
            f"one-time cache build (preprocess stage, cache_size 256): {build_s:.1f} s "
            f"({len(items) / build_s:.0f} images/s)"
        )
        split = load_split(Path(tmp) / "cache", "train")
        ref = Reference(root, args.repeat, args.batch_size, args.workers, args.seed)
        ours = Ours(split.images, split.labels, args.batch_size, args.workers, args.seed)
        ref.step(), ours.step()  # warm-up: lazy imports, first-call allocations, page cache
        ours.times = dict.fromkeys(ours.times, 0.0)

        ref_n = ref_s = ours_n = ours_s = 0.0
        if args.workers == 0:
            for _ in range(ref_batches):
                n, s = timed(ref, 1)
                ref_n, ref_s = ref_n + n, ref_s + s
                n, s = timed(ours, args.ours_per_ref)
                ours_n, ours_s = ours_n + n, ours_s + s
        else:
            per_epoch = -(-len(items) // args.batch_size)
            for _ in range(max(1, ref_batches // per_epoch)):
                n, s = timed(ref, per_epoch)
                ref_n, ref_s = ref_n + n, ref_s + s
                n, s = timed(ours, per_epoch * args.ours_per_ref)
                ours_n, ours_s = ours_n + n, ours_s + s
        times = ours.times
        del ours, split  # release the memmap before the tmp dir goes

    ref_rate, ours_rate = ref_n / ref_s, ours_n / ours_s
    ratio = ours_rate / ref_rate
    total = sum(times.values())
    shares = ", ".join(f"{k} {v / total:.0%} ({1e3 * v / ours_n:.2f} ms/img)" for k, v in times.items())
    label = "BatchAugment"
    print(f"reference  ImageFolder + PIL transforms, full-res JPEG  {int(ref_n):6d} img  {ref_rate:8.1f} images/s")
    print(f"ours       cache 256 memmap + {label:<16} + Normalize {int(ours_n):6d} img  {ours_rate:8.1f} images/s")
    print(
        f"ratio      ours / reference                                        {ratio:8.1f}x  ({verdict(ratio, TARGET)})"
    )
    print(f"ours, where the time goes: {shares}")
    return {"reference_images_per_s": ref_rate, "ours_images_per_s": ours_rate, "ratio": ratio}


if __name__ == "__main__":
    main()
