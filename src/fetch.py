"""Stage `fetch`: bring the dataset (synthetic, local folder/archive, URL or Kaggle) into one tree.

    python src/fetch.py --params params.yaml --out data/raw

Reads only the `data:` section of params.yaml. Writes ``<out>/{train,val,test}/{NORMAL,PNEUMONIA}/``
(replaced wholesale) and prints the image counts per split and class.
"""

from __future__ import annotations

from cxr.stage import progress_enabled, run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
from pathlib import Path

from cxr.config import ConfigError, load_params, section
from cxr.data.config import DataConfig
from cxr.data.sources import SourceError, fetch

ERRORS = (SourceError, ConfigError)  # user-actionable (see cxr.stage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="canonical raw tree to (re)create")
    args = parser.parse_args(argv)

    cfg = section(load_params(args.params), "data", DataConfig)
    # Relative data paths are relative to the repository root, where DVC runs the stage.
    report = fetch(cfg, args.out, base_dir=Path.cwd(), progress=progress_enabled())

    print(f"fetch: source={report.source} -> {report.out_dir}")
    for note in report.notes:
        print(f"  {note}")
    print(report.table())
    if report.total == 0:
        raise SourceError(f"no images arrived in {report.out_dir}; check data.source and data.path")
    return 0


if __name__ == "__main__":
    run_stage("fetch", main, ERRORS)
