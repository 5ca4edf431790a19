"""Run the speed and memory benchmarks, one after another, each in its own process.

    .venv/bin/python benchmarks/run_all.py [--data DIR]     # or: make bench

``BENCHMARKS`` is the one list of what ``make bench`` runs: scripts that time or weigh our code against
a reference in one process and print the machine, the library versions, both sides and their ratio.
``RESEARCH`` are the other scripts in this folder: they
train models to measure accuracy (minutes to an hour each, some need earlier output) and are run by
name, as benchmarks/README.md shows. A new script belongs in one of the two lists
(tests/test_benchmarks_run.py fails otherwise). A benchmark that fails is reported and the others
still run; the exit code is 1 at the end if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("preprocess", "input_pipeline", "augment", "memory", "gpu_training")  # in this order
RESEARCH = ("external_recipe", "kernel_agreement", "set_a_clinical")  # run by name, never by make bench


def run(names: tuple[str, ...] | list[str], data: str | None = None, folder: Path = HERE) -> list[str]:
    """Run ``folder/<name>.py`` for each name (``--data`` forwarded), printing each outcome; the failed names."""
    failed = []
    for name in names:
        cmd = [sys.executable, str(folder / f"{name}.py")] + (["--data", data] if data else [])
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=folder.parent)
        print(
            f"-- {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s\n", flush=True
        )
        if rc:
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="forwarded to every benchmark")
    args = ap.parse_args(argv)
    missing = [f"{name}.py" for name in BENCHMARKS if not (HERE / f"{name}.py").is_file()]
    if missing:
        print(f"run_all: {', '.join(missing)} not in {HERE}: fix BENCHMARKS in {Path(__file__).name}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    failed = run(BENCHMARKS, args.data, HERE)
    print(f"{len(BENCHMARKS) - len(failed)} of {len(BENCHMARKS)} benchmarks ok in {time.perf_counter() - t0:.0f} s")
    print(f"not run here (they train models; run by name, see benchmarks/README.md): {', '.join(RESEARCH)}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
