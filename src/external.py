"""Stage `external`: the external validation sets of ``external.sets``, taken in and decoded like the splits.

    python src/external.py --params params.yaml --manifest data/manifest.csv --cache data/cache \
        --out data/external --metrics metrics/external.json

(what `dvc repro external` runs). Every model is evaluated on each set after training (stage
evaluate); no set ever chooses anything. A set holding one of the run's pictures is refused. The
logic lives in :mod:`cxr.data.external`.
"""

from __future__ import annotations

from cxr.stage import progress_enabled, run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
from pathlib import Path

from cxr.config import ConfigError, load_params, section
from cxr.data.cache import CacheError
from cxr.data.config import DataConfig, ExternalConfig, SplitConfig
from cxr.data.external import ExternalError, build_all
from cxr.data.limits import ArchiveLimitError
from cxr.data.manifest import ManifestError
from cxr.data.sources import SourceError
from cxr.files import write_metrics

ERRORS = (ConfigError, ExternalError, SourceError, ArchiveLimitError, ManifestError, CacheError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", required=True, help="the split stage's manifest (the run's own images)")
    ap.add_argument("--cache", required=True, help="the preprocess stage's cache (decoding settings, thumbnails)")
    ap.add_argument("--out", required=True, help="folder of the decoded sets (replaced)")
    ap.add_argument("--metrics", required=True, help="what each set holds (JSON)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = section(params, "external", ExternalConfig)
    metrics = build_all(
        cfg,
        section(params, "data", DataConfig),
        section(params, "split", SplitConfig),
        Path(args.manifest),
        Path(args.cache),
        Path(args.out),
        base_dir=Path.cwd(),
        progress=progress_enabled(not args.no_progress),
    )
    write_metrics(args.metrics, metrics)
    if not metrics:
        print("[external] no external set configured (external.sets is empty)")
    for name, m in metrics.items():
        im = m["images"]
        print(
            f"[external] {name}: {im['total']} images ({im['NORMAL']} NORMAL, {im['PNEUMONIA']} PNEUMONIA) of "
            f"{m['patients']} patients, {m['quarantined']} quarantined; closest to the run's {m['checked_against']} "
            f"images: similarity {m['closest_similarity']} (refused from {cfg.max_similarity})"
        )
    return 0


if __name__ == "__main__":
    run_stage("external", main, ERRORS)
