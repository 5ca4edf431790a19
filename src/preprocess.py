"""Stage `preprocess`: decode every manifest image once into a memory-mappable cache.

    python src/preprocess.py --params params.yaml --raw data/raw --manifest data/manifest.csv --out data/cache

(what `dvc repro preprocess` runs). The logic lives in :mod:`cxr.data.cache`.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import time

from cxr import SPLITS
from cxr.config import ConfigError, load_params, section
from cxr.data.cache import build_cache
from cxr.data.config import PreprocessConfig
from cxr.data.manifest import ManifestError

ERRORS = (ConfigError, ManifestError, FileNotFoundError)  # user-actionable (see cxr.stage)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", required=True, help="canonical tree the manifest paths are relative to")
    ap.add_argument("--manifest", required=True, help="manifest CSV written by the split stage")
    ap.add_argument("--out", required=True, help="cache folder")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    cfg = section(load_params(args.params), "preprocess", PreprocessConfig)
    t0 = time.perf_counter()
    info = build_cache(args.manifest, args.raw, args.out, cfg, progress=not args.no_progress)
    seconds = time.perf_counter() - t0

    n = sum(info["counts"][s]["total"] for s in SPLITS)
    size = info["cache_size"]
    for s in SPLITS:
        c = info["counts"][s]
        print(f"{s:<6} {c['total']:>6} images  ({c['NORMAL']} NORMAL, {c['PNEUMONIA']} PNEUMONIA)")
    print(
        f"decoded {n} images to {size}x{size} ({info['resize']}) in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.0f} images/s) -> {args.out}, data_version {info['data_version']}"
    )
    return 0


if __name__ == "__main__":
    run_stage("preprocess", main, ERRORS)
