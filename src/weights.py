"""Stage weights: download, verify and keep the pretrained weights this run's params need.

    python src/weights.py --params params.yaml --out models/pretrained

(normally via ``dvc repro weights``; ``train@<model>`` and ``sweep`` depend on its output). Reads
``train.pretrained`` and ``models.<name>.pretrained`` / ``.weights``, as the params stage resolves them into
resolved/weights.json (the stage's dependency, so that its params follow the model list:
:func:`cxr.training.run_config.pretrained_weights`). For every model that trains
from its published weights, they are fetched into --out/<model>/ (torchvision's URL and sha256
prefix; the ViT's Hugging Face repository at a pinned commit) unless already there, or in the torch
hub / Hugging Face cache; ``models.<name>.weights`` (a local file) is used as it is. --out/manifest.json
records the source and the sha256 of every file, so ``dvc repro`` tracks the weights, a rerun never
downloads again and ``dvc push`` / ``dvc pull weights`` carries them to an offline machine. With
pretrained false (the synthetic default) nothing is fetched and only the manifest is written.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import shutil
import time
from pathlib import Path

from cxr.config import ConfigError, load_params
from cxr.files import sha256_file
from cxr.pretrained import WeightsUnavailableError, read_manifest, write_manifest
from cxr.training.run_config import pretrained_weights


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True, help="folder of the materialised weights (a DVC output)")
    p.add_argument("--no-progress", action="store_true", help="no download progress bars")
    return p.parse_args(argv)


def local_record(name: str, local: str) -> dict:
    """The manifest record of ``models.<name>.weights``: its files' hashes, so dvc.lock changes when they do."""
    loc = Path(local)
    if not loc.exists():
        raise WeightsUnavailableError(f"models.{name}.weights: {local} does not exist")
    files = [loc] if loc.is_file() else sorted(f for f in loc.rglob("*") if f.is_file())
    return {
        "source": "local",
        "path": str(local),
        "files": {(f.name if f == loc else str(f.relative_to(loc))): sha256_file(f) for f in files},
    }


def materialise_all(wanted: dict[str, str | None], out: Path, progress: bool) -> dict[str, dict]:
    """Every wanted model's weights under ``out`` -> its manifest record; all failures in one error."""
    from cxr.models import get_entry
    from cxr.models.weights import HubSnapshot, TorchvisionWeights, materialise

    previous = read_manifest(out)["models"]
    records, failures = {}, []
    for name, local in wanted.items():
        if local is not None:
            records[name] = local_record(name, local)
            print(f"[weights] {name}: local weights {local}")
            continue
        t0 = time.monotonic()
        try:
            rec = materialise(name, out, progress=progress, known=previous.get(name))
        except WeightsUnavailableError as exc:  # try the others too: one run lists everything missing
            failures.append(f"({time.monotonic() - t0:.1f} s) {exc}")
            continue
        source = get_entry(name).pretrained_source
        assert isinstance(source, TorchvisionWeights | HubSnapshot)  # materialise refuses any other source
        print(f"[weights] {name}: {source.describe()} {rec.pop('how')} -> {out / name}")
        records[name] = rec
    if failures:
        raise WeightsUnavailableError("\n\n".join(failures))
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    wanted = pretrained_weights(load_params(args.params))
    records = materialise_all(wanted, out, progress=not args.no_progress) if wanted else {}
    # Weights of models this run does not pretrain are not kept in the output (DVC's cache still has them).
    stale = sorted(p for p in out.iterdir() if p.is_dir() and p.name not in records) if out.is_dir() else []
    for path in stale:
        shutil.rmtree(path)
    write_manifest(out, records)
    if not wanted:
        print("[weights] no model trains from pretrained weights (train.pretrained: false): nothing to fetch")
    return 0


if __name__ == "__main__":
    run_stage("weights", main, (ConfigError, WeightsUnavailableError))
