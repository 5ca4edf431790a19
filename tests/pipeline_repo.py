"""Helpers for end-to-end tests: a throwaway git + DVC copy of this project, run at tiny sizes.

The copy holds exactly the files git would ship (tracked plus untracked-but-not-ignored), byte for byte,
so it behaves like a fresh clone of the working tree, committed or not. Tests change it only the way a
user does: ``dvc exp run -S`` (TINY, below), ``make real REAL_ARGS=...``. :func:`make_repo` refuses a copy
that differs from what ships, and :func:`assert_changed_only_by` checks afterwards that params.yaml is
what DVC's own writer makes of the shipped file with those overrides, and every other shipped
configuration file is untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests also runs the stages

# Small enough that every stage of the whole pipeline runs in seconds on a 2-core CPU, large enough that
# every split holds both classes: passed as a user passes sizes, `dvc exp run -S key=value` (see tiny()).
TINY = {
    "epochs": 1,
    "image_size": 32,
    "batch_size": 8,
    "data.synthetic.patients": 36,
    "data.synthetic.max_images_per_patient": 2,
    "data.synthetic.min_size": 64,
    "data.synthetic.max_size": 96,
    "preprocess.cache_size": 40,
    "preprocess.workers": 1,
    "evaluate.n_resamples": 200,
    "evaluate.gallery_per_outcome": 1,  # every figure still drawn (Grad-CAM too), with fewer images
    "evaluate.augment_examples": 1,
    "evaluate.augment_draws": 2,
    # the shipped demo sizes of each model (params.yaml's models.*) give way to one epoch
    "models.cnn.epochs": 1,
    "models.resnet_small.epochs": 1,
    "models.resnet50.epochs": 1,
    "models.vgg16.epochs": 1,
    # A ViT of the same code at a tenth of ViT-B's width and a sixth of its depth: a user's quick trial
    # (`+`: options holds no config key to override). ViT-B (86 M weights) cost a minute a run here to train,
    # save, hash and evaluate; tests/models cover ViT-B's shapes and its Grad-CAM.
    "+models.vit.options.config": "{hidden_size:64,num_hidden_layers:2,num_attention_heads:2,intermediate_size:128}",
    "sweep.batch_sizes": "[8,16]",
    "sweep.lrs": "[0.001]",
    "sweep.epochs": 1,
    "sweep.image_size": 32,
    # Exporting VGG16 and ViT-base to MLflow costs seconds and hundreds of MB a run; the logged
    # model itself is covered by the unit tests, and compare still registers the best one.
    "mlflow.log_model": "false",
}


def tiny() -> list[str]:
    """TINY as ``dvc exp run`` arguments: ``-S key=value`` each."""
    return [a for k, v in TINY.items() for a in ("-S", f"{k}={v}")]


def set_params(args: list[str]) -> list[str]:
    """The ``key=value`` overrides among ``dvc exp run`` arguments (what follows each ``-S``)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-S", "--set-param")]


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


def stop_group(proc: subprocess.Popen) -> None:
    """End ``proc`` (started with ``start_new_session=True``) and its children: SIGTERM to its process group,
    SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(cmd: list[str], cwd: Path, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed with exit code {p.returncode}\n--- stdout ---\n{p.stdout[-6000:]}"
            f"\n--- stderr ---\n{p.stderr[-6000:]}"
        )
    return p


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


def make_repo(dest: Path) -> Path:
    """Copy the project into ``dest`` as a fresh git repo (one commit, "shipped"): the shipped files byte for
    byte, dvc.lock and the committed results included, as a clone has them; only the offline plots page that
    `make install` builds is added."""
    dest.mkdir(parents=True, exist_ok=True)
    files = shipped_files()
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    differ = [rel for rel in files if (dest / rel).read_bytes() != (REPO_ROOT / rel).read_bytes()]
    assert not differ, f"the test copy differs from the shipped files: {differ}"
    install_plots_template(dest)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "shipped"], dest)
    return dest


# The shipped files a run may rewrite, each the way DVC does: params.yaml by `-S`, the rest as outputs.
CONFIG_FILES = ("dvc.yaml", "configs/real.yaml", ".dvc/config", "Makefile", "pyproject.toml")


def assert_changed_only_by(repo: Path, args: list[str]) -> None:
    """params.yaml in ``repo`` is what DVC's own writer makes of the shipped file with the ``-S`` overrides
    in ``args`` (in order), and dvc.yaml, configs/ and the other configuration files are the shipped bytes:
    no fixture rewrote what ships."""
    import tempfile

    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        expected = Path(tmp) / "params.yaml"
        shutil.copyfile(REPO_ROOT / "params.yaml", expected)
        apply_overrides(expected, set_params(args))
        assert (repo / "params.yaml").read_text() == expected.read_text(), (
            f"{repo / 'params.yaml'} is not the shipped file with {set_params(args)} applied by DVC"
        )
    changed = [rel for rel in CONFIG_FILES if (repo / rel).read_bytes() != (REPO_ROOT / rel).read_bytes()]
    assert not changed, f"shipped configuration rewritten in {repo}: {changed}"


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_runs(repo: Path) -> list:
    client = mlflow_client(repo)
    exp = client.get_experiment_by_name("chest-xray-pneumonia")
    assert exp is not None, "the pipeline's MLflow experiment was not created in the workspace store"
    return client.search_runs([exp.experiment_id], max_results=1000)


def build_baseline(dest: Path) -> dict:
    """``make_repo``, then the whole pipeline at tiny sizes as a user runs it, ``dvc exp run -n baseline
    -S ...`` (TINY), and its workspace (params and results) committed as "baseline results":
    {"repo": the repo, "first": that run's stdout, "args": its dvc exp run arguments}."""
    repo = make_repo(dest)
    args = ["-n", "baseline", *tiny()]
    first = run(["dvc", "exp", "run", *args], repo, timeout=1800)
    assert_changed_only_by(repo, args)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline results"], repo)
    return {"repo": repo, "first": first.stdout, "args": args}


# Written once and never rewritten in place: a copy may share their inodes (hard links) with the original.
# DVC stores cache files read-only; MLflow writes each artifact once, under its run's or model's own folder.
IMMUTABLE_TREES = (".dvc/cache", "mlartifacts")


def copy_repo(src: Path, dest: Path) -> Path:
    """A copy of a built repo (git, DVC cache, workspace results, MLflow store) in ``dest`` for a test to
    change freely: everything is copied except the immutable trees (IMMUTABLE_TREES), which are hard-linked,
    so a copy of a whole pipeline's repo takes seconds. The absolute paths of ``src`` that MLflow's store
    (artifact locations) and DVC's experiment records in .dvc/tmp hold are rewritten to ``dest``: what runs in
    the copy writes nothing into ``src``."""
    src, dest = Path(src).resolve(), Path(dest).resolve()

    def copy(s: str, d: str) -> None:
        rel = Path(s).relative_to(src).as_posix()
        if any(rel.startswith(t + "/") for t in IMMUTABLE_TREES):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, copy_function=copy)
    # src itself, not a longer name that starts with it: followed by a separator, a quote or nothing.
    root = re.compile(re.escape(str(src).encode()) + rb"(?=[/\"']|$)")
    for f in (dest / ".dvc" / "tmp").rglob("*"):
        if f.is_file() and not f.is_symlink() and f.stat().st_size < 1 << 20:
            data = f.read_bytes()
            if root.search(data):
                f.write_bytes(root.sub(str(dest).encode(), data))
    if (dest / "mlflow.db").is_file():
        repoint_sqlite(dest / "mlflow.db", f"{src}/", f"{dest}/")
    return dest


def repoint_sqlite(db: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every text column of every table of the SQLite database ``db``."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for col in con.execute(f"PRAGMA table_info('{table}')").fetchall():
                name, decl = col[1], (col[2] or "").upper()
                if any(t in decl for t in ("CHAR", "TEXT", "CLOB")):
                    con.execute(
                        f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) WHERE instr("{name}", ?) > 0',
                        (old, new, old),
                    )
        con.commit()
    finally:
        con.close()


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
        "resume": f"data/resume/{model}.pt",
        **paths,
    }
    cmd = [sys.executable, str(REPO_ROOT / "src" / "train.py")]
    for k, v in args.items():
        cmd += [f"--{k}", v]
    return [*cmd, "--no-progress"]
