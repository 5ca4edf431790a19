"""Memory: peak non-file-backed memory of preprocess and of one training epoch, at 1x and 8x the data.

    .venv/bin/python benchmarks/memory.py [--data DIR] [--base-repeat 2] [--factor 8] [--size 256] [--interval-ms 5]

Each case runs in a fresh subprocess (``--child``); this process samples it every ``--interval-ms``
(5 ms by default: decoding a large progressive JPEG briefly holds an 8 MiB coefficient buffer for
a few tens of ms, and a coarser sampler catches that peak more often in a long run than in a
short one, which reads as growth with the data when it is not). What is
measured, summed over the child and its own children (build_cache's decoding pool):

- ``anon``: Pss_Anon + Pss_Shmem from /proc/PID/smaps_rollup, i.e. heap, Python objects, tensors,
  shared memory, with pages shared between forked processes split among them (PSS). File-backed
  pages are excluded: the memory-mapped cache and the shared libraries are page cache that the
  kernel can drop and re-read at any time, so they do not grow the process's real footprint. This is
  the number the target is about;
- ``rss``: plain RSS (file-backed pages included), shown so the file-backed part is visible: it
  grows with the data as memmap pages are touched, which is expected.

Cases: ``preprocess`` (build_cache at --size, all cores) and ``train`` (one epoch of the cnn at 64 px,
batch 32, AdamW, BatchAugment + Normalize via ``cxr.training.engine.train_one_epoch``, over the whole cache
read by memmap). 1x is the file list repeated ``--base-repeat`` times; 8x is ``--factor`` times that.
Target: 8x within 20 % of 1x (anon).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_data_arg, build_cached, list_images, print_header, repeated, verdict

TARGET = 0.20
HERE = Path(__file__).resolve()


def smaps_kb(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def sample_tree(proc) -> tuple[float, float]:
    """(anon MiB, rss MiB) of ``proc`` and its descendants now."""
    import psutil

    anon = rss = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for p in procs:
        try:
            m = smaps_kb(p.pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        anon += m.get("Pss_Anon", 0) + m.get("Pss_Shmem", 0)
        rss += m.get("Rss", 0)
    return anon / 1024, rss / 1024


def measure(args: list[str], interval: float = 0.005) -> tuple[float, float, float]:
    """Run this file with ``args`` in a subprocess; (peak anon MiB, peak rss MiB, seconds)."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(HERE), "--child", *args])
    proc = psutil.Process(child.pid)
    peak_anon = peak_rss = 0.0
    while child.poll() is None:
        anon, rss = sample_tree(proc)
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(interval)
    if child.returncode != 0:
        sys.exit(f"child {' '.join(args)} failed with exit code {child.returncode}")
    return peak_anon, peak_rss, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# The children
# ------------------------------------------------------------------------------------------------


def child_preprocess(root: Path, repeat: int, out: Path, size: int) -> None:
    _, files = list_images(root)
    build_cached(root, repeated(files, repeat), out, cache_size=size)


def child_train(cache: Path) -> None:
    import torch
    from torch import nn

    from cxr.config import AugmentConfig
    from cxr.data.augment import BatchAugment, Normalize
    from cxr.data.cache import load_split
    from cxr.models import build_model, input_spec
    from cxr.training.engine import train_one_epoch
    from cxr.training.loaders import make_loader

    torch.manual_seed(0)
    split = load_split(cache, "train")  # read-only memmap
    spec = input_spec("cnn")
    model = build_model("cnn", image_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(split.images, split.labels, batch_size=32, shuffle=True, seed=0)
    aug, norm = BatchAugment(AugmentConfig(), 64), Normalize(spec["mean"], spec["std"])
    gen = torch.Generator().manual_seed(0)
    stats = train_one_epoch(
        model, nn.BCEWithLogitsLoss(), opt, loader, torch.device("cpu"), augment=lambda x: aug(x, gen), prep=norm
    )
    assert stats["images_per_s"] > 0


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arg(ap)
    ap.add_argument("--base-repeat", type=int, default=2, help="1x = the file list repeated this often (default 2)")
    ap.add_argument("--factor", type=int, default=8, help="the large case is this many times 1x (default 8)")
    ap.add_argument("--size", type=int, default=256, help="cache_size (default 256)")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="sampling interval in ms (default 5)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "preprocess":
            child_preprocess(Path(rest[0]), int(rest[1]), Path(rest[2]), int(rest[3]))
        else:
            child_train(Path(rest[0]))
        return None

    root, files = list_images(args.data)
    interval = args.interval_ms / 1000
    print_header(
        f"memory: peak non-file-backed memory (PSS anon + shmem), preprocess and one training epoch, "
        f"1x vs {args.factor}x data"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        for mult in (1, args.factor):
            repeat = args.base_repeat * mult
            n = len(files) * repeat
            cache = Path(tmp) / f"cache{mult}"
            a, r, s = measure(["preprocess", str(root), str(repeat), str(cache), str(args.size)], interval)
            size_mb = (cache / "train_images.npy").stat().st_size / 2**20
            print(
                f"  {mult}x preprocess  {n:5d} images ({size_mb:6.1f} MiB cache file): anon {a:7.1f} MiB, "
                f"rss {r:7.1f} MiB ({s:.1f} s)",
                flush=True,
            )
            results[("preprocess", mult)] = a
            a, r, s = measure(["train", str(cache)], interval)
            print(
                f"  {mult}x train epoch {n:5d} images ({size_mb:6.1f} MiB cache file): anon {a:7.1f} MiB, "
                f"rss {r:7.1f} MiB ({s:.1f} s)",
                flush=True,
            )
            results[("train", mult)] = a

    out = {}
    for case in ("preprocess", "train"):
        small, big = results[(case, 1)], results[(case, args.factor)]
        growth = big / small - 1
        out[case] = growth
        print(
            f"{case:<11} peak anon 1x {small:7.1f} MiB, {args.factor}x {big:7.1f} MiB: {growth:+.1%}  "
            f"({verdict(growth, TARGET, '<=')})"
        )
    return out


if __name__ == "__main__":
    main()
