"""Writing DVC metrics files: valid JSON whatever the numbers (NaN, numpy scalars).

    write_metrics("metrics/eval/cnn.json", report)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(obj):
    """``obj`` with NaN/inf as null and numpy scalars as Python numbers (AUC is NaN with one class present)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON (a DVC metrics file), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(obj), indent=2) + "\n")
    return path
