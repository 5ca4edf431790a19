"""GPU training throughput per model at 224 px: the reference loader vs ours, and the epoch time for 5,216 images.

    .venv/bin/python benchmarks/gpu_training.py [--data DIR] [--models cnn resnet50 vgg16 vit] [--workers N]

Without a CUDA GPU it says so and exits 0. For each model (random initialisation, no downloads):

reference: ImageFolder + PIL decode of the full-resolution JPEGs + the seed notebook's transforms in
    ``--workers`` DataLoader workers (pinned memory), batch 32, the model step on the GPU;
ours: the cache (``build_cache`` at 256 in a tmp dir) as ``cxr.training.fit`` uses it: staged on the
    GPU once (``cxr.training.engine.stage_on_device``), batches indexed there by ``cxr.training.engine.make_loader``,
    ``train_one_epoch`` with ``BatchAugment`` + ``Normalize`` on the GPU, channels_last for CNNs and
    the autocast dtype of ``cxr.device.amp_settings`` (bf16 where supported);
ours, streamed: the same, but every batch read from the memory-mapped cache into a reused pinned
    buffer and copied non-blocking (what happens when a cache is too large to stage on the GPU);
model step alone: the same training step on one GPU-resident batch, no loader at all: the ceiling.

Both sides use the same model settings, batch size and AdamW (fused); the reference loader uses
``--workers`` DataLoader workers, ours needs none (it reads a memory-mapped array). Each times
``--batches`` batches after ``--warmup`` untimed ones. The epoch time is 5,216 (the official train
split) / images per second.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import add_data_arg, build_cached, list_images, print_header, repeated

TRAIN_IMAGES = 5216
HERE = Path(__file__).resolve().parent


class Cycle:
    """A DataLoader re-created per epoch (fresh shuffle), consumed forever."""

    def __init__(self, make):
        self.make, self.epoch = make, 0
        self.it = iter(make(0))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.make(self.epoch))
            return next(self.it)


class Limited:
    """The first ``n`` batches of an endless iterator, as a loader ``train_one_epoch`` can consume."""

    def __init__(self, it, n: int):
        self.it, self.n = it, n

    def __iter__(self):
        return itertools.islice(self.it, self.n)

    def __len__(self):
        return self.n


def setup(name: str, device: torch.device):
    from cxr.device import amp_settings
    from cxr.models import build_model, get_entry

    torch.manual_seed(0)
    model = build_model(name, pretrained=False, image_size=224).to(device)
    channels_last = get_entry(name).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    amp_dtype, use_scaler = amp_settings(device, True)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    return model, opt, amp_dtype, scaler


def timed(name, device, batches, augment, prep, args) -> float:
    """Training images/s of ``name`` over ``batches`` through ``cxr.training.engine.train_one_epoch``, the loop
    ``fit`` uses, so every side times the same step: ``--warmup`` batches untimed, then ``--batches``."""
    from cxr.training.engine import train_one_epoch

    model, opt, amp_dtype, scaler = setup(name, device)
    kw = dict(augment=augment, prep=prep, amp_dtype=amp_dtype, scaler=scaler)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_one_epoch(model, loss_fn, opt, Limited(batches, args.warmup), device, **kw)
    return train_one_epoch(model, loss_fn, opt, Limited(batches, args.batches), device, **kw)["images_per_s"]


def run_ours(name, device, images, labels, args) -> float:
    """Our path; ``images`` a host memmap (streamed) or a staged CUDA tensor."""
    from cxr.config import AugmentConfig
    from cxr.data.augment import BatchAugment, Normalize
    from cxr.training.engine import make_loader
    from cxr.models import get_entry, input_spec

    spec = input_spec(name)
    aug = BatchAugment(AugmentConfig(), 224)
    gen = torch.Generator().manual_seed(0)
    batches = Cycle(lambda e: make_loader(images, labels, batch_size=args.batch_size, shuffle=True, seed=e,
                                          device=device, num_workers=0, drop_last=True))
    return timed(name, device, batches, lambda x: aug(x, gen),
                 Normalize(spec["mean"], spec["std"], channels_last=get_entry(name).channels_last), args)


def run_step_only(name, device, images, args) -> float:
    """The model's training step on one fixed GPU batch: what any loader can at best reach."""
    from cxr.data.augment import Normalize, eval_resize
    from cxr.models import get_entry, input_spec

    spec = input_spec(name)
    x = Normalize(spec["mean"], spec["std"], channels_last=get_entry(name).channels_last)(
        eval_resize(torch.from_numpy(np.array(images[: args.batch_size])).unsqueeze(1).to(device), 224))
    y = torch.arange(len(x), device=device).remainder(2).float()
    return timed(name, device, itertools.repeat((x, y)), _same, _same, args)


def run_reference(name, device, root, repeat, args) -> float:
    """The reference loader's batches (already float, normalised, 3 channels) into the same step."""
    from torch.utils.data import DataLoader

    from cxr.models import get_entry
    from input_pipeline import reference_loader

    def make(epoch):
        dl = reference_loader(root, repeat, args.batch_size, args.workers, seed=epoch)
        # Same dataset and transforms, plus what a GPU loader needs: pinned memory, no ragged last batch.
        loader = DataLoader(dl.dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                            pin_memory=True, drop_last=True, persistent_workers=False,
                            generator=torch.Generator().manual_seed(epoch))
        return ((x, y.float()) for x, y in loader)  # ImageFolder's int labels as the BCE targets

    channels_last = get_entry(name).channels_last
    return timed(name, device, Cycle(make), _same,
                 (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else _same, args)


def _same(x):
    return x


def main(argv=None) -> dict | None:
    from cxr.models import list_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arg(ap)
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="DataLoader workers of the reference loader (default: min(8, cores)); ours needs none")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per side and model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first (cudnn autotune, allocator)")
    ap.add_argument("--repeat", type=int, default=4, help="times the file list is repeated (default 4)")
    args = ap.parse_args(argv)

    print_header("gpu_training: training images/s per model at 224 px, reference loader vs ours")
    if not torch.cuda.is_available():
        print("no CUDA GPU present: nothing to measure (this benchmark needs one); exiting.")
        return None
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    root, files = list_images(args.data)
    items = repeated(files, args.repeat)
    print(f"data: {root} ({len(files)} files x {args.repeat}); batch {args.batch_size}, workers {args.workers}, "
          f"{args.batches} timed batches after {args.warmup}")

    from cxr.data.cache import load_split
    from cxr.training.engine import stage_on_device

    results = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        build_cached(root, items, Path(tmp) / "cache", cache_size=256)
        split = load_split(Path(tmp) / "cache", "train")
        staged = stage_on_device(split.images, device)
        print(f"cache staged on the GPU: {isinstance(staged, torch.Tensor)}; images/s (seconds per epoch of "
              f"{TRAIN_IMAGES:,} images)", flush=True)
        for name in args.models:
            ref = run_reference(name, device, root, args.repeat, args)
            ours = run_ours(name, device, staged, split.labels, args)
            streamed = run_ours(name, device, split.images, split.labels, args)
            ceiling = run_step_only(name, device, split.images, args)
            results[name] = {"reference": ref, "ours": ours, "streamed": streamed, "step_only": ceiling}
            print(f"{name:<9} reference {ref:7.1f} ({TRAIN_IMAGES / ref:5.1f} s)   ours {ours:7.1f} "
                  f"({TRAIN_IMAGES / ours:5.1f} s)   ratio {ours / ref:5.1f}x   | ours streamed {streamed:7.1f}   "
                  f"model step alone {ceiling:7.1f} (ours reaches {ours / ceiling:.0%})", flush=True)
            torch.cuda.empty_cache()
        del staged, split
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
