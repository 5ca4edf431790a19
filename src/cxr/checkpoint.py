"""Model checkpoints: ``model.pt`` (a state_dict) + ``model.json`` (everything needed to rebuild and use it).

    save("models/cnn", model, meta)          # meta: FitResult.meta from cxr.training.fit
    model, meta = load("models/cnn")         # rebuilt with pretrained=False, weights_only=True load
    probs = predict(model, images, mean=meta["mean"], std=meta["std"], image_size=meta["image_size"])

Nothing is pickled: the JSON names the architecture (``arch``: registry name, image size, builder
options), the input normalisation, class names, the validation-chosen decision threshold, the
training parameters, data version, best epoch and its validation metrics, and library versions.

Both files are DVC outputs, so they hold nothing that changes between two runs of the same code,
params, data and seed: no MLflow run id, git commit, host or timing (those are MLflow tags), and
``model.pt`` is written through a file object, so its zip records are not named after the random
temporary file (``torch.save(obj, path)`` names them after ``path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from cxr.models import rebuild

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict:
    import numpy
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def clean_state_dict(model: nn.Module) -> dict:
    """CPU state_dict without the ``_orig_mod.`` prefix torch.compile adds, so it loads into a plain model."""
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(model_dir: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write model_dir/model.pt and model_dir/model.json; ``meta`` must contain ``arch`` (see build_model)."""
    model_dir = Path(model_dir)
    arch = meta.get("arch") or getattr(getattr(model, "_orig_mod", model), "arch", None)
    if not arch:
        raise ValueError("checkpoint meta needs 'arch' (name, image_size, options); build the model with cxr.models.build_model")
    full = {"format_version": FORMAT_VERSION, **meta, "arch": arch,
            "library_versions": meta.get("library_versions") or library_versions()}
    _atomic_write(model_dir / WEIGHTS_FILE, lambda p: _save_state(clean_state_dict(model), p))
    _atomic_write(model_dir / META_FILE, lambda p: Path(p).write_text(json.dumps(full, indent=2, default=_json_default) + "\n"))
    return model_dir


def _save_state(state: dict, path: str) -> None:
    # Through a file object: the archive's records are then named "archive/...", not after ``path``.
    with open(path, "wb") as f:
        torch.save(state, f)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_meta(model_dir: str | Path) -> dict:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint metadata at {path}; expected a folder written by cxr.checkpoint.save "
                                f"(run `dvc repro train` to create models/<name>)")
    return json.loads(path.read_text())


def load(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the architecture (random init, no downloads) and load the weights with ``weights_only=True``."""
    meta = load_meta(model_dir)
    model = rebuild(meta["arch"])
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta
