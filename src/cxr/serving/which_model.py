"""Which model ``cxr predict`` uses, and its name for people.

    with model_folder(args.model, args.results, args.models_dir, progress=False) as (folder, name):
        predictor = Predictor.from_dir(folder)       # name: "cxr-pneumonia version 3 (models:/cxr-pneumonia@champion)"

A checkpoint folder is used where it is; a registered model (``models:/...``, ``runs:/...``) is downloaded
from the tracking store into a temporary folder that is removed on leaving the block, with MLflow's
download bar only when progress is wanted; no ``--model`` means the model the compare stage selected.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from cxr import checkpoint
from cxr.tracking.registry import version_name

DEFAULT_RESULTS_CSV = Path("reports") / "results.csv"
DEFAULT_MODELS_DIR = Path("models")
REGISTRY_SCHEMES = ("models:/", "runs:/")
REGISTER_HINT = "`dvc repro -f -s compare` registers the selected model"


class ModelNotFoundError(FileNotFoundError):
    """No model folder was given and none could be found from the compare stage's outputs."""


@contextlib.contextmanager
def model_folder(
    model: str | None,
    results_csv: str | Path = DEFAULT_RESULTS_CSV,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    progress: bool = True,
) -> Iterator[tuple[Path, str]]:
    """The checkpoint folder for ``--model`` (module docstring) and the model's name for people."""
    if model and model.startswith(REGISTRY_SCHEMES):
        with tempfile.TemporaryDirectory(prefix="cxr-model-") as tmp:
            yield _download(model, Path(tmp), progress), version_name(model)
        return
    folder = Path(model) if model else best_model_dir(results_csv, models_dir)
    yield folder, str(folder)


def _download(uri: str, dest: Path, progress: bool) -> Path:
    from cxr.run_context import tracking_uri
    from cxr.tracking.registry import download_model

    try:
        local = download_model(uri, dest, progress)
    except Exception as exc:
        raise ModelNotFoundError(
            f"cannot fetch {uri} from the MLflow store {tracking_uri()} ({exc.__class__.__name__}: "
            f"{exc}); {REGISTER_HINT}, or set MLFLOW_TRACKING_URI to the store that holds it"
        ) from None
    found = sorted(p.parent for p in local.rglob(checkpoint.META_FILE))
    if not found:
        raise ModelNotFoundError(f"{uri} holds no {checkpoint.META_FILE}: not a model registered by this pipeline")
    return found[0]


def best_model_dir(results_csv: str | Path = DEFAULT_RESULTS_CSV, models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """``models/<best>``: the model the compare stage selected on validation (the ``selected`` row of
    reports/results.csv)."""
    results_csv, models_dir = Path(results_csv), Path(models_dir)
    fix = (
        "run `dvc repro` (the compare stage picks the best model on validation), "
        "or pass --model models/<name> (a folder with model.pt and model.json)"
    )
    if not results_csv.is_file():
        raise ModelNotFoundError(f"no --model given and no model comparison found at {results_csv}: {fix}")
    table = pd.read_csv(results_csv)
    if "model" not in table.columns or "selected" not in table.columns:
        raise ModelNotFoundError(
            f"{results_csv} has no 'model'/'selected' columns (found {list(table.columns)}): {fix}"
        )
    chosen = table.loc[table["selected"].astype(str).str.lower() == "true", "model"].tolist()
    if len(chosen) != 1:
        raise ModelNotFoundError(f"{results_csv} marks {len(chosen)} models as selected, expected 1: {fix}")
    model_dir = models_dir / str(chosen[0])
    if not (model_dir / checkpoint.META_FILE).is_file():
        raise ModelNotFoundError(
            f"{results_csv} selects {chosen[0]!r} but {model_dir}/{checkpoint.META_FILE} is "
            f"missing (run `dvc pull` or `dvc repro train@{chosen[0]}`), or pass --model"
        )
    return model_dir
