"""GPU training throughput per model at 224 px: the reference loader vs ours, at batch 32 and at the
best batch size, on one GPU and on all visible GPUs (DDP), with the ratios and the epoch time for 5,216 images.

    .venv/bin/python benchmarks/gpu_training.py [--data DIR] [--models cnn resnet50 vgg16 vit] [--workers N]
        [--batch-sizes 32 64 128 256 512] [--compile] [--processes N]

Without a CUDA GPU it says so and exits 0. For each model (random initialisation, no downloads):

reference: ImageFolder + PIL decode of the full-resolution JPEGs + the seed notebook's transforms in
    ``--workers`` DataLoader workers (pinned memory), batch 32, the model step on the GPU;
ours: the cache (``build_cache`` at 256 in a tmp dir) as ``cxr.training.fit`` uses it: staged on the
    GPU once (``cxr.training.loaders.stage_on_device``), batches indexed there by ``cxr.training.loaders.make_loader``,
    ``train_one_epoch`` with ``BatchAugment`` + ``Normalize`` on the GPU, channels_last for CNNs and
    the autocast dtype of ``cxr.device.amp_settings`` (bf16 where supported);
ours, streamed: the same, but every batch read from the memory-mapped cache into a reused pinned
    buffer and copied non-blocking (what happens when a cache is too large to stage on the GPU);
model step alone: the same training step on one GPU-resident batch, no loader at all: the ceiling.

best batch: ours and the model step alone at every ``--batch-sizes`` value (until one does not fit
    in memory); the best is the one where ours is fastest, reported with its share of that ceiling;
all GPUs: ours at the best batch per GPU in one process per visible GPU (``--processes``), DDP over
    NCCL through ``cxr.training.distributed`` (the path of ``train.devices``), images of all GPUs per
    second, and the scaling efficiency against N x one GPU.

``--compile`` adds ``torch.compile`` (the ``train.compile`` knob) to every side. Targets (on
one H200): ResNet50 at the best batch >= 90 % of its model-step ceiling and >= 3,000 images/s.
``--device cpu --processes 2`` runs the whole script on CPU (gloo) as a smoke test of its logic.

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

from _common import add_data_arg, build_cached, list_images, print_header, repeated, verdict

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


def setup(name: str, device: torch.device, compile_model: bool = False):
    from cxr.device import amp_settings
    from cxr.models import build_model, get_entry
    from cxr.training import distributed

    torch.manual_seed(0)
    model = build_model(name, pretrained=False, image_size=224).to(device)
    channels_last = device.type == "cuda" and get_entry(name).channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    amp_dtype, use_scaler = amp_settings(device, True)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    step = torch.compile(model) if compile_model else model
    return distributed.wrap(step, device), opt, amp_dtype, scaler


def timed(name, device, batches, augment, prep, args) -> float:
    """Training images/s of ``name`` over ``batches`` through ``cxr.training.engine.train_one_epoch``, the loop
    ``fit`` uses, so every side times the same step: ``--warmup`` batches untimed, then ``--batches``.
    Under a process group: the images of every rank per second (DDP, as ``train.devices`` runs it)."""
    from cxr.training import distributed
    from cxr.training.engine import train_one_epoch

    model, opt, amp_dtype, scaler = setup(name, device, args.compile)
    kw = dict(augment=augment, prep=prep, amp_dtype=amp_dtype, scaler=scaler)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_one_epoch(model, loss_fn, opt, Limited(batches, args.warmup), device, **kw)
    tr = train_one_epoch(model, loss_fn, opt, Limited(batches, args.batches), device, **kw)
    return distributed.reduce_train_stats(tr)["images_per_s"]


def _prep(name, device):
    from cxr.data.augment import Normalize
    from cxr.models import get_entry, input_spec

    spec = input_spec(name)
    return Normalize(spec["mean"], spec["std"], channels_last=device.type == "cuda" and get_entry(name).channels_last)


def run_ours(name, device, images, labels, args, batch_size=None) -> float:
    """Our path; ``images`` a host memmap (streamed) or a staged CUDA tensor."""
    from cxr.config import AugmentConfig
    from cxr.data.augment import BatchAugment
    from cxr.training.loaders import make_loader

    bs = batch_size or args.batch_size
    aug = BatchAugment(AugmentConfig(), 224)
    gen = torch.Generator().manual_seed(0)
    batches = Cycle(
        lambda e: make_loader(
            images, labels, batch_size=bs, shuffle=True, seed=e, device=device, num_workers=0, drop_last=True
        )
    )
    return timed(name, device, batches, lambda x: aug(x, gen), _prep(name, device), args)


def run_step_only(name, device, images, args, batch_size=None) -> float:
    """The model's training step on one fixed device batch: what any loader can at best reach."""
    from cxr.data.augment import eval_resize

    bs = batch_size or args.batch_size
    idx = np.arange(bs) % len(images)
    x = _prep(name, device)(eval_resize(torch.from_numpy(np.array(images[idx])).unsqueeze(1).to(device), 224))
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
        loader = DataLoader(
            dl.dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(epoch),
        )
        return ((x, y.float()) for x, y in loader)  # ImageFolder's int labels as the BCE targets

    channels_last = device.type == "cuda" and get_entry(name).channels_last
    return timed(
        name,
        device,
        Cycle(make),
        _same,
        (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else _same,
        args,
    )


def _same(x):
    return x


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def best_batch(name, device, staged, labels, args) -> dict:
    """Ours and the step ceiling at every ``--batch-sizes`` value that fits; the batch where ours is fastest."""
    rows = {}
    for bs in args.batch_sizes:
        try:
            rows[bs] = {
                "ours": run_ours(name, device, staged, labels, args, bs),
                "step_only": run_step_only(name, device, staged, args, bs),
            }
        except RuntimeError as exc:
            if not _oom(exc):
                raise
            print(f"{name:<9} batch {bs}: out of memory; larger batches not tried", flush=True)
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        r = rows[bs]
        print(
            f"{name:<9} batch {bs:4d}: ours {r['ours']:8.1f}   model step alone {r['step_only']:8.1f}   "
            f"(ours reaches {r['ours'] / r['step_only']:.0%})",
            flush=True,
        )
    bs = max(rows, key=lambda b: rows[b]["ours"])
    return {"batch_size": bs, **rows[bs], "by_batch": rows}


def _all_gpus_worker(rank, world, port, name, cache, bs, args, out):
    """One rank of the all-GPU measurement: torchrun's environment, our process group, DDP, ours at ``bs``."""
    from cxr.data.cache import load_split
    from cxr.training import distributed
    from cxr.training.loaders import stage_on_device

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    sys.path.insert(0, str(HERE))
    device = distributed.local_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with distributed.process_group(device, timeout_s=600):
        split = load_split(cache, "train")
        staged = stage_on_device(split.images, device)
        ips = run_ours(name, device, staged, split.labels, args, bs)
        if rank == 0:
            Path(out).write_text(str(ips))


def all_gpus(name, cache, bs, args) -> float:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = Path(cache).parent / f"all_gpus_{name}.txt"
    mp.start_processes(
        _all_gpus_worker,
        args=(args.processes, port, name, str(cache), bs, args, str(out)),
        nprocs=args.processes,
        start_method="spawn",
        join=True,
    )
    return float(out.read_text())


def main(argv=None) -> dict | None:
    from cxr.models import list_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arg(ap)
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers of the reference loader (default: min(8, cores)); ours needs none",
    )
    ap.add_argument("--batch-size", type=int, default=32, help="the reference configuration's batch")
    ap.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[32, 64, 128, 256, 512],
        help="batch sizes tried for the best batch (ascending; stops at the first that does not fit)",
    )
    ap.add_argument("--batches", type=int, default=30, help="timed batches per side and model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first (cudnn autotune, allocator, compile)")
    ap.add_argument("--repeat", type=int, default=4, help="times the file list is repeated (default 4)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every side's model (train.compile)")
    ap.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes of the all-GPU measurement (default: every visible GPU; 1 skips it)",
    )
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    args = ap.parse_args(argv)

    print_header("gpu_training: training images/s per model at 224 px, reference loader vs ours, 1 and all GPUs")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU present: nothing to measure (this benchmark needs one); exiting.")
        return None
    if args.processes is None:
        args.processes = torch.cuda.device_count() if device.type == "cuda" else 1
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}; compile={args.compile}")
    root, files = list_images(args.data)
    items = repeated(files, args.repeat)
    print(
        f"data: {root} ({len(files)} files x {args.repeat}); reference batch {args.batch_size}, workers "
        f"{args.workers}, {args.batches} timed batches after {args.warmup}; batch sizes tried {args.batch_sizes}"
    )

    from cxr.data.cache import load_split
    from cxr.training.loaders import stage_on_device

    results = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        cache = Path(tmp) / "cache"
        build_cached(root, items, cache, cache_size=256)
        split = load_split(cache, "train")
        staged = stage_on_device(split.images, device)
        print(
            f"cache staged on the GPU: {isinstance(staged, torch.Tensor)}; images/s (seconds per epoch of "
            f"{TRAIN_IMAGES:,} images)",
            flush=True,
        )
        for name in args.models:
            ref = run_reference(name, device, root, args.repeat, args)
            ours = run_ours(name, device, staged, split.labels, args)
            streamed = run_ours(name, device, split.images, split.labels, args)
            ceiling = run_step_only(name, device, split.images, args)
            print(
                f"{name:<9} batch {args.batch_size}: reference {ref:7.1f} ({TRAIN_IMAGES / ref:5.1f} s)   ours "
                f"{ours:7.1f} ({TRAIN_IMAGES / ours:5.1f} s)   ratio {ours / ref:5.1f}x   | ours streamed "
                f"{streamed:7.1f}   model step alone {ceiling:7.1f} (ours reaches {ours / ceiling:.0%})",
                flush=True,
            )
            best = best_batch(name, device, staged, split.labels, args)
            r = {"reference": ref, "ours": ours, "streamed": streamed, "step_only": ceiling, "best": best}
            print(
                f"{name:<9} best batch {best['batch_size']}: ours {best['ours']:8.1f} "
                f"({TRAIN_IMAGES / best['ours']:5.1f} s)"
                f" = {best['ours'] / ref:5.1f}x the reference at batch {args.batch_size}, "
                f"{best['ours'] / best['step_only']:.0%} of its model step",
                flush=True,
            )
            if name == "resnet50" and device.type == "cuda":
                print(
                    f"resnet50  targets: >= 90 % of the model step: {best['ours'] / best['step_only']:.0%}  "
                    f"{verdict(best['ours'] / best['step_only'], 0.9)};  >= 3,000 images/s: {best['ours']:.0f} "
                    f"{verdict(best['ours'], 3000)}",
                    flush=True,
                )
            if args.processes > 1:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                multi = all_gpus(name, cache, best["batch_size"], args)
                r["all_gpus"] = multi
                print(
                    f"{name:<9} all {args.processes} processes at batch {best['batch_size']} each: {multi:8.1f} "
                    f"({TRAIN_IMAGES / multi:5.1f} s) = {multi / best['ours']:.2f}x one "
                    f"({multi / (args.processes * best['ours']):.0%} scaling), {multi / ref:5.1f}x the reference",
                    flush=True,
                )
            results[name] = r
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del staged, split
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
