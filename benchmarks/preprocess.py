"""Preprocess: ``cxr.data.cache.build_cache`` vs a plain single-process Pillow loop, images/s and ratio.

    .venv/bin/python benchmarks/preprocess.py [--data DIR] [--repeat 4] [--size 256] [--rounds 2]

plain: for each file, ``Image.open``, ``convert('L')``, ``resize((S, S), BILINEAR)`` into a numpy array,
    one process (what a first version of the preprocess stage would do).
ours: ``build_cache`` on the same list (every core, JPEG draft mode, streamed into a memmap in a tmp dir).

The list is the full-resolution files repeated ``--repeat`` times; the rounds alternate the two sides
and each side's best round is kept. The mean |difference| between the two outputs is printed too
(grey levels of 255): the speed must not come from a worse picture.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import add_data_arg, build_cached, list_images, print_header, repeated, usable_cores, verdict

TARGET = 3.0


def plain_loop(root: Path, items: list[tuple[str, str]], size: int) -> np.ndarray:
    out = np.empty((len(items), size, size), dtype=np.uint8)
    for i, (path, _label) in enumerate(items):
        with Image.open(root / path) as img:
            out[i] = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arg(ap)
    ap.add_argument("--repeat", type=int, default=4, help="times the file list is repeated (default 4)")
    ap.add_argument("--size", type=int, default=256, help="cache_size (default 256)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="build_cache workers (default 0 = every core)")
    args = ap.parse_args(argv)

    root, files = list_images(args.data)
    items = repeated(files, args.repeat)
    print_header(
        f"preprocess: build_cache vs plain Pillow loop ({args.size} px, "
        f"{args.workers or usable_cores()} worker processes vs 1)"
    )
    print(f"data: {root} ({len(files)} files x {args.repeat} = {len(items)} images)")

    from cxr.data.cache import load_split

    plain_best = ours_best = 0.0
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        plain_loop(root, files[:4], args.size)  # warm-up: page cache, lazy imports
        for r in range(args.rounds):
            t0 = time.perf_counter()
            plain = plain_loop(root, items, args.size)
            s = time.perf_counter() - t0
            plain_best = max(plain_best, len(items) / s)
            print(
                f"  round {r + 1}: plain loop   {len(items)} images in {s:.2f} s = {len(items) / s:.1f} images/s",
                flush=True,
            )
            s = build_cached(root, items, Path(tmp) / f"cache{r}", cache_size=args.size, workers=args.workers)
            ours_best = max(ours_best, len(items) / s)
            print(
                f"  round {r + 1}: build_cache  {len(items)} images in {s:.2f} s = {len(items) / s:.1f} images/s",
                flush=True,
            )
        cached = load_split(Path(tmp) / "cache0", "train").images
        diff = np.abs(cached[: len(files)].astype(np.float32) - plain[: len(files)].astype(np.float32)).mean(
            axis=(1, 2)
        )
        del cached

    ratio = ours_best / plain_best
    print(f"plain      open + convert('L') + resize, 1 process   {plain_best:9.1f} images/s")
    print(f"ours       build_cache (draft mode, all cores)       {ours_best:9.1f} images/s")
    print(f"ratio      ours / plain                              {ratio:9.1f}x  ({verdict(ratio, TARGET)})")
    print(f"agreement  mean |ours - plain| per image: mean {diff.mean():.2f}, max {diff.max():.2f} grey levels of 255")
    return {"plain_images_per_s": plain_best, "ours_images_per_s": ours_best, "ratio": ratio}


if __name__ == "__main__":
    main()
