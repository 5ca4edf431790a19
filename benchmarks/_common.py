"""Shared pieces of the benchmarks: where the images are, the machine/library header, the cache in a tmp dir.

Not a benchmark itself: ``benchmarks/run_all.py`` runs only the scripts its BENCHMARKS list names.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "kermany-fullres"
CLASS_DIRS = ("NORMAL", "PNEUMONIA")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the seed notebook's Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder holding NORMAL/ and PNEUMONIA/ (or train/NORMAL, train/PNEUMONIA) of "
        f"full-resolution JPEGs (default: {DEFAULT_DATA})",
    )


def class_root(data: Path) -> Path:
    """The folder whose subfolders are the class folders (``data`` or ``data/train``)."""
    data = Path(data)
    for cand in (data / "train", data):
        if all((cand / c).is_dir() for c in CLASS_DIRS):
            return cand
    sys.exit(
        f"benchmark data not found: expected {data}/train/{{NORMAL,PNEUMONIA}} or {data}/{{NORMAL,PNEUMONIA}} "
        f"(the full-resolution sample of ../shared/data, see its README). Pass --data FOLDER."
    )


def list_images(data: Path) -> tuple[Path, list[tuple[str, str]]]:
    """(class root, sorted [(path relative to the root, label)]) of every JPEG/PNG under the class folders."""
    root = class_root(data)
    files = sorted(
        (f"{c}/{p.name}", c)
        for c in CLASS_DIRS
        for p in (root / c).iterdir()
        if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    )
    if not files:
        sys.exit(f"no images under {root}/{{NORMAL,PNEUMONIA}}")
    return root, files


def repeated(files: list, repeat: int) -> list:
    return [f for _ in range(repeat) for f in files]


def manifest_for(files: list[tuple[str, str]]):
    """A manifest DataFrame (every image in split 'train') as the split stage would write it.

    Repeated entries point at the same file: ``build_cache`` decodes each row, so a file listed
    k times is decoded k times, which is what the benchmarks want (no copies of the images).
    """
    import pandas as pd

    from cxr.data.manifest import MANIFEST_COLUMNS

    rows = [
        {
            "path": p,
            "label": lab,
            "patient_id": f"bench/{i}",
            "source_split": "train",
            "split": "train",
            "sha256": "",
            "width": 0,
            "height": 0,
            "mode": "L",
        }
        for i, (p, lab) in enumerate(files)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def build_cached(root: Path, files: list[tuple[str, str]], out: Path, cache_size: int = 256, workers: int = 0) -> float:
    """Build the project's cache of ``files`` in ``out``; returns the seconds it took."""
    from cxr.data.cache import build_cache
    from cxr.data.config import PreprocessConfig

    t0 = time.perf_counter()
    build_cache(
        manifest_for(files), root, out, PreprocessConfig(cache_size=cache_size, workers=workers), progress=False
    )
    return time.perf_counter() - t0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment_lines() -> list[str]:
    import numpy
    import PIL
    import torch
    import torchvision

    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores ({usable_cores()} usable), "
        f"{platform.system()} {platform.release()}{load}; GPU: {gpu}",
        f"versions: python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"torchvision {torchvision.__version__}, pillow {PIL.__version__}, numpy {numpy.__version__}",
    ]


def print_header(title: str) -> None:
    print(f"== {title} ==")
    for line in environment_lines():
        print(line)
    sys.stdout.flush()


def verdict(value: float, target: float, op: str = ">=") -> str:
    ok = value >= target if op == ">=" else value <= target
    return f"target {op} {target:g}: {'met' if ok else 'NOT met'}"
