"""The torch-free part of pretrained weights: ``models/pretrained/manifest.json`` (what the ``weights``
stage materialised for each model) and the error a missing copy raises.

Kept apart from :mod:`cxr.models.weights` (which imports torch) so that the stage writes the empty
manifest of a run without pretrained weights (the synthetic default) without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but no local copy could be loaded."""


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "models": {}}
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def write_manifest(out_dir: str | Path, records: dict[str, dict[str, Any]]) -> Path:
    """``manifest.json``: what each model's weights are (source, URL or revision, sha256 per file). No
    timestamps and no "how", so the same weights give the same bytes (DVC outputs are deterministic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: {f: v for f, v in r.items() if f != "how"} for k, r in sorted(records.items())}
    path = out / MANIFEST
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "models": clean}, indent=2, sort_keys=True) + "\n")
    return path
