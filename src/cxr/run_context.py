"""Where this process's MLflow runs go and what they are called: the project root (``$DVC_ROOT`` inside a
queued ``dvc exp run``, else the git top level), the store URI, the artifact folder, the git commit, run
names and the tags every training run carries. Cheap to import: no MLflow (``cxr.tracking`` loads it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def project_root(cwd: str | Path | None = None) -> Path:
    """$DVC_ROOT, else the git top level of ``cwd``, else ``cwd``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path(cwd or os.getcwd())
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip()).resolve()
    except (OSError, subprocess.SubprocessError):
        pass
    return cwd.resolve()


def tracking_uri(cwd: str | Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root(cwd) / 'mlflow.db'}"


def artifact_location(cwd: str | Path | None = None) -> str:
    return (project_root(cwd) / "mlartifacts").as_uri()


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_name(what: str, experiment: str | None = None) -> str:
    """``cnn [exp-name]`` inside ``dvc exp run`` (DVC_EXP_NAME) or for work on that ``experiment``'s results,
    else ``cnn [<short commit>]``: two experiments' runs can be told apart in the MLflow UI."""
    exp = os.environ.get("DVC_EXP_NAME") or experiment
    if exp:
        return f"{what} [{exp}]"
    commit = git_commit(project_root())
    return f"{what} [{commit[:7]}]" if commit else what


def run_tags(model: str, data_version: str = "", device: str = "") -> dict:
    """The tags every training run carries: git commit, DVC experiment name, data version, device, model."""

    tags = {
        "model": model,
        "stage": "train",
        "data_version": data_version,
        "device": device,
        "git_commit": git_commit(project_root()) or "unknown",
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags
