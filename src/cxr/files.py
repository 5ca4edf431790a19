"""Writing files the pipeline tracks: atomically (a crash never leaves half a file), DVC metrics
files as valid JSON whatever the numbers (NaN, numpy scalars), CSVs that any legal file name
survives; the sha256 of a file.

    atomic_write("models/cnn/model.pt", lambda tmp: torch.save(state, tmp))
    write_metrics("metrics/eval/cnn.json", report)
    write_csv(table, "data/manifest.csv")    # csv_text(table): the same as text
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def csv_quoting(cells: Any) -> int:
    """How a CSV holding ``cells`` must quote: as the csv module does by default, unless a text cell
    holds a carriage return, which that leaves bare with ``lineterminator="\\n"`` (a file named
    ``IM-1\\r.jpeg`` then reads back as two rows): then every text field is quoted. Files without one
    keep their bytes, so DVC outputs do not change."""
    return csv.QUOTE_NONNUMERIC if any(isinstance(c, str) and "\r" in c for c in cells) else csv.QUOTE_MINIMAL


def csv_text(table: Any, **kwargs: Any) -> str:
    """``table`` (a DataFrame) as CSV text: ``\\n`` line ends, no index, quoted so that every cell round-trips
    through ``pandas.read_csv`` (:func:`csv_quoting`)."""
    text_cells = table.select_dtypes(exclude="number").to_numpy().ravel()
    return str(table.to_csv(index=False, lineterminator="\n", quoting=csv_quoting(text_cells), **kwargs))


def write_csv(table: Any, path: str | Path, **kwargs: Any) -> None:
    """:func:`csv_text` of ``table``, written to ``path``."""
    Path(path).write_text(csv_text(table, **kwargs), encoding="utf-8")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (archives and weights are GBs)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(json_safe(obj), indent=2) + "\n"))


# plots/history/<model>.csv: one row per epoch (seconds and images/s go to MLflow only: they differ every run).
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr"]


def clean_number(v):
    """JSON/CSV-safe number: NaN (AUC with one class in validation) becomes null; floats to 6 places."""
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    return v


def write_history(path: str | Path, history: list[dict]) -> None:
    """The per-epoch history CSV (a DVC plot) of a training run: HISTORY_COLUMNS only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: clean_number(row.get(k)) for k in HISTORY_COLUMNS})
