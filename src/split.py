"""Stage `split`: manifest of usable images, patient-level splits, quarantine report, data metrics.

    python src/split.py --params params.yaml --raw data/raw --manifest data/manifest.csv \
        --quarantine data/quarantine.csv --metrics metrics/data.json

(what `dvc repro split` runs). The logic lives in :mod:`cxr.data.manifest`.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import json
import time
from pathlib import Path

from cxr.config import ConfigError, load_params, section
from cxr.data.config import SplitConfig
from cxr.data.manifest import ManifestError, build_manifest, summary_table, write_manifest, write_quarantine

ERRORS = (ConfigError, ManifestError)  # user-actionable (see cxr.stage)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", required=True, help="canonical tree raw/{train,val,test}/{NORMAL,PNEUMONIA}")
    ap.add_argument("--manifest", required=True, help="output CSV, one row per usable image")
    ap.add_argument("--quarantine", required=True, help="output CSV of unusable files and why")
    ap.add_argument("--metrics", required=True, help="output JSON (DVC metrics)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    cfg = section(load_params(args.params), "split", SplitConfig)
    t0 = time.perf_counter()
    result = build_manifest(args.raw, cfg, progress=not args.no_progress)
    seconds = time.perf_counter() - t0

    write_manifest(result.manifest, args.manifest)
    write_quarantine(result.quarantine, args.quarantine)
    metrics_path = Path(args.metrics)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(result.metrics, indent=2) + "\n")

    print(summary_table(result.metrics))
    n = result.metrics["files_scanned"]
    print(f"verified {n} files in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} files/s) -> {args.manifest}")
    if len(result.quarantine):
        print(f"{len(result.quarantine)} file(s) quarantined, see {args.quarantine}:")
        for row in result.quarantine.head(5).itertuples():
            print(f"  {row.path}: {row.reason} ({row.detail})")
    return 0


if __name__ == "__main__":
    run_stage("split", main, ERRORS)
