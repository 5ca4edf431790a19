"""Helpers for end-to-end tests: a throwaway git + DVC copy of this project with tiny params.

The copy holds exactly the files git would ship (tracked plus untracked-but-not-ignored), so it
behaves like a fresh clone of the working tree, committed or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests also runs the stages

# Small enough that every stage of the whole pipeline runs in seconds on a 2-core CPU,
# large enough that every split holds both classes.
TINY_PARAMS = {
    "epochs": 1,
    "image_size": 32,
    "batch_size": 8,
    "data": {"synthetic": {"patients": 36, "max_images_per_patient": 2, "min_size": 64, "max_size": 96}},
    "preprocess": {"cache_size": 40, "workers": 1},
    "evaluate": {"n_resamples": 200},
    "sweep": {"model": "cnn", "batch_sizes": [8, 16], "lrs": [0.001], "image_size": 32},
    # Exporting VGG16 and ViT-base to MLflow costs seconds and hundreds of MB a run; the logged
    # model itself is covered by the unit tests, and compare still registers the best one.
    "mlflow": {"log_model": False},
}


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    # The pipeline's own store (mlflow.db in the repo): nothing of the test process's MLflow settings.
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        e.pop(k, None)
    e.update(
        GIT_AUTHOR_NAME="cxr-test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="cxr-test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
        HF_HUB_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return e


def run(cmd: list[str], cwd: Path, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed with exit code {p.returncode}\n--- stdout ---\n{p.stdout[-6000:]}"
            f"\n--- stderr ---\n{p.stderr[-6000:]}"
        )
    return p


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def shipped_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and (REPO_ROOT / f).is_file()]


def install_plots_template(dest: Path) -> None:
    """The offline plots page `make install` writes (git-ignored, so a copy or clone lacks it)."""
    page = REPO_ROOT / ".dvc" / "offline_plots.html"
    if not page.is_file():
        raise AssertionError(f"{page} is missing: run `make install` (npm ci + python -m cxr.offline_plots)")
    shutil.copy2(page, dest / ".dvc" / page.name)


def make_repo(dest: Path, params: dict | None = None) -> Path:
    """Copy the project into ``dest`` as a fresh git repo whose params.yaml has ``params`` merged in."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in shipped_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    # Outputs produced in the working tree must not leak into the copy as stale results.
    for rel in ("dvc.lock",):
        (dest / rel).unlink(missing_ok=True)
    install_plots_template(dest)
    p = yaml.safe_load((dest / "params.yaml").read_text())
    deep_update(p, TINY_PARAMS if params is None else params)
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "baseline"], dest)
    return dest


def load_stage(name: str):
    """src/<name>.py as a module, by path (the names evaluate/sweep/compare are too generic to import by name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO_ROOT / "src" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage_script(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python src/<name>.py args...`` as DVC runs it: the real exit code and stderr."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "src" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def train_stage_cmd(model: str = "cnn", **paths: str) -> list[str]:
    """``python src/train.py ...`` with the train stage's arguments, relative to a work folder; ``paths``
    override one (``metrics="m.json"``)."""
    args = {
        "params": "params.yaml",
        "model": model,
        "cache": "data/cache",
        "out": f"models/{model}",
        "metrics": f"metrics/train/{model}.json",
        "history": f"plots/history/{model}.csv",
        "figures": f"figures/train/{model}",
        "resume": f"data/resume/{model}.pt",
        **paths,
    }
    cmd = [sys.executable, str(REPO_ROOT / "src" / "train.py")]
    for k, v in args.items():
        cmd += [f"--{k}", v]
    return [*cmd, "--no-progress"]
