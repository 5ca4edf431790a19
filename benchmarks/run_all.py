"""Run every benchmark in this folder, one after another, each in its own process.

    .venv/bin/python benchmarks/run_all.py [--data DIR]     # or: make bench

Each benchmark prints the machine, library versions, both sides and their ratio; a benchmark that
fails is reported and the others still run (exit code 1 at the end if any failed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["preprocess", "input_pipeline", "augment", "memory", "gpu_training"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="forwarded to every benchmark")
    args = ap.parse_args()
    found = sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_") and p.stem != "run_all")
    names = [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--data", args.data] if args.data else [])
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(
            f"-- {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s\n", flush=True
        )
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
