"""The ways users drive the pipeline, end to end, in a temporary git + DVC copy of the shipped files, run at
tiny sizes through ``dvc exp run -S`` (pipeline_repo.TINY).

1. ``dvc exp run -S ...`` runs fetch through compare; ``dvc repro`` afterwards runs nothing.
2. ``dvc exp run -S lr=1e-4 -S batch_size=16`` reruns only what depends on them; ``dvc exp show`` lists it.
3. ``dvc plots diff`` between the baseline and that experiment holds both revisions' plots.
4. Two queued experiments run with ``dvc queue start -j 2``; both MLflow runs land in the workspace store.
5. An ``mlflow server`` on 127.0.0.1 returns the runs through its REST search API with the same keys.
6. A model added as a contributor adds one (its module and its params.yaml entry) trains, is evaluated and
   is in every DVC chart, with no line of dvc.yaml.
7. A fresh clone of the committed results (dvc.lock, no DVC cache, no remote): ``dvc repro`` rebuilds
   the same bytes (``git status`` clean, the lock unchanged), and ``dvc exp run`` with or without a
   stage target finishes and is listed in ``dvc exp show``.

    pytest tests/test_workflows.py -m slow
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from browser import dump_dom
from cxr.metric_names import RUNS_VIEW
from pipeline_repo import (
    REPO_ROOT,
    copy_repo,
    env,
    experiment_runs,
    install_plots_template,
    mlflow_client,
    run,
)
from servers import mlflow_process

README = REPO_ROOT / "README.md"
# The first test a worker runs here builds the shared repos (a whole pipeline, then an experiment).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

MODELS = ["cnn", "resnet_small", "resnet50", "vgg16", "vit"]
# The models whose lr is the global one: params.yaml's models.vgg16 and models.vit set their own (TINY leaves them)
GLOBAL_LR = ["cnn", "resnet_small", "resnet50"]
# the sweep's selected configuration, kept as a model (the shipped sweep.model: TINY leaves it)
TUNED = f"{yaml.safe_load((REPO_ROOT / 'params.yaml').read_text())['sweep']['model']}-tuned"
STAGES = [
    "params",
    "fetch",
    "split",
    "preprocess",
    "external",
    "weights",
    *(f"train@{m}" for m in MODELS),
    *(f"evaluate@{m}" for m in MODELS),
    "sweep",
    f"evaluate_tuned@{TUNED}",  # the sweep's kept model
    "compare",
    "plots",  # the long-form data of the DVC plots
]


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def pipeline(pipeline_baseline):
    """A repo after one full ``dvc repro``, with the results committed as the baseline (conftest's, built
    once a session and shared with other modules: read it, never change it)."""
    return pipeline_baseline


def test_exp_run_runs_every_stage_then_repro_nothing(pipeline, tmp_path):
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")  # dvc commands write DVC's locks: never in a shared repo
    assert ran_stages(pipeline["first"]) == set(STAGES)
    # run on the shipped dvc.lock without its cache, and saved (on the commit before "baseline results")
    assert "baseline" in run(["dvc", "exp", "list", "--all-commits", "--name-only"], repo).stdout.split()
    for rel in [
        "data/manifest.csv",
        "data/cache/info.json",
        "metrics/data.json",
        "reports/results.md",
        "reports/results.csv",
        "metrics/sweep.json",
        *(f"models/{m}/model.json" for m in MODELS),
        *(f"metrics/eval/{m}.json" for m in MODELS),
        *(f"plots/eval/{m}/confusion.csv" for m in MODELS),
    ]:
        assert (repo / rel).is_file(), f"{rel} missing after dvc repro"
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["shared_patients"] == 0
    # Every model is one MLflow run with the same param keys (MLflow's compare view lines them up).
    train_runs = [
        r for r in experiment_runs(repo) if r.data.tags.get("model") in MODELS and r.data.tags.get("stage") == "train"
    ]
    assert sorted(r.data.tags["model"] for r in train_runs) == sorted(MODELS)
    assert sorted(r.info.run_name for r in train_runs) == sorted(f"{m} [baseline]" for m in MODELS)
    keys = {frozenset(r.data.params) for r in train_runs}
    assert len(keys) == 1 and {"lr", "batch_size", "epochs", "image_size", "model"} <= set(next(iter(keys)))

    second = run(["dvc", "repro"], repo)
    assert ran_stages(second.stdout) == set(), second.stdout
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status


@pytest.fixture(scope="module")
def experiment(pipeline_experiment):
    """A copy of the baseline after ``dvc exp run -n lr-bs -S lr=1e-4 -S batch_size=16`` (conftest's, built
    once a session and shared with test_plots_offline: read its files, run nothing in it)."""
    return pipeline_experiment


@pytest.fixture
def experiment_copy(experiment, tmp_path):
    """The experiment's repo copied for a test that runs dvc or changes it."""
    return {**experiment, "repo": copy_repo(experiment["repo"], tmp_path / "repo")}


def test_exp_run_reruns_only_dependent_stages(experiment_copy):
    repo, out = experiment_copy["repo"], experiment_copy["exp_out"]
    ran = ran_stages(out)
    # The models that train with the global lr or batch size are retrained; vgg16, whose models.vgg16 pins
    # both, is not (its resolved settings, train@vgg16's dependency, are the same bytes), nor evaluated again.
    assert {f"train@{m}" for m in GLOBAL_LR} | {"train@vit"} <= ran, ran
    assert not ran & {"train@vgg16", "evaluate@vgg16"}, ran
    assert "Stage 'train@vgg16' didn't change" in out, out[-3000:]
    # Stages that do not read lr / batch_size are not rerun (the sweep has its own grid).
    assert not ran & {"fetch", "split", "preprocess", "external", "weights", "sweep"}, ran
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    names = {e.get("name") for e in exps}
    assert "lr-bs" in names, names
    exp = next(e for e in exps if e.get("name") == "lr-bs")
    data = exp["revs"][0]["data"]
    params = data["params"]["params.yaml"]["data"]
    assert float(params["lr"]) == pytest.approx(1e-4) and int(params["batch_size"]) == 16
    metrics = data["metrics"]
    # One small headline file is the only DVC metric (details are git-tracked outs, out of the way).
    assert list(metrics) == ["metrics/headline.json"], list(metrics)
    assert set(metrics["metrics/headline.json"]["data"]["val_auc"]) == {*MODELS, TUNED}
    # Plain `dvc exp show` in a 160-column terminal: DVC pages the whole table through `less -S`, whose
    # first screen must hold the experiment names and, first, the headline metrics.
    screen = terminal_screen(["dvc", "exp", "show"], repo, columns=160)
    assert max(len(line) for line in screen) <= 160, screen
    header = next((line for line in screen if "Experiment" in line), None)
    assert header is not None, screen
    assert header.split()[:3] == ["Experiment", "Created", "val_auc.cnn"], header
    assert "val_auc.resnet_small" in header and "auc.cnn" in header.split(), header
    rows = {line.split()[0]: line for line in screen if line.split() and line.split()[0] in ("workspace", "main")}
    assert set(rows) == {"workspace", "main"}, screen
    assert any("[lr-bs]" in line for line in screen), screen
    # Without the pager (--no-pager, or a pipe with COLUMNS=160) DVC must squeeze every column into the
    # width; hundreds of params squash even the names, so the README's compact view is --only-changed.
    table = subprocess.run(
        ["dvc", "exp", "show", "--no-pager", "--only-changed", "--sort-by", "val_auc.cnn"],
        cwd=repo,
        env={**env(), "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 160
    assert "lr-bs" in table.stdout
    header = next(line for line in table.stdout.splitlines() if "Experiment" in line).split()
    assert header[:2] == ["Experiment", "Created"] and header[2].startswith("val_auc."), header
    # The experiment's own MLflow runs carry its name and the new values.
    runs = [
        r
        for r in experiment_runs(repo)
        if r.data.tags.get("dvc_exp_name") == "lr-bs" and r.data.tags.get("stage") == "train"
    ]
    assert sorted(r.info.run_name for r in runs) == sorted(f"{m} [lr-bs]" for m in MODELS if m != "vgg16")
    assert all(float(r.data.params["lr"]) == pytest.approx(1e-4) or r.data.tags["model"] == "vit" for r in runs)
    assert all(int(r.data.params["batch_size"]) == 16 for r in runs)


def test_plots_diff_holds_both_revisions(experiment_copy, tmp_path):
    repo = experiment_copy["repo"]
    out = tmp_path / "plots"
    run(["dvc", "plots", "diff", "HEAD", "lr-bs", "-o", str(out)], repo)
    html = (out / "index.html").read_text()
    for rev in ("HEAD", "lr-bs"):
        assert rev in html
    assert "confusion" in html.lower() and "predicted" in html and "actual" in html
    assert "train_loss" in html and "val_loss" in html
    # Both revisions' confusion data are embedded (one panel each), not only the workspace's.
    assert html.count('"rev": "HEAD"') + html.count('"rev":"HEAD"') > 0
    assert html.count('"rev": "lr-bs"') + html.count('"rev":"lr-bs"') > 0


def test_queued_experiments_land_in_workspace_store(experiment_copy):
    repo = experiment_copy["repo"]
    # One model's setting each: its training, the stages that read the model list (plots, compare) and no more;
    # not the sweep, which depends on its own model's settings only (models.${sweep.model})
    queued = {"q-cnn2": "models.cnn.epochs=2", "q-cnn3": "models.cnn.epochs=3"}
    for name, setting in queued.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", setting], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 1800
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, f"queued experiments did not finish:\n{status}"
        time.sleep(5)
    assert status.count("Success") >= 2, status
    tagged = {r.data.tags.get("dvc_exp_name") for r in experiment_runs(repo) if r.data.tags.get("stage") == "train"}
    assert set(queued) <= tagged, tagged
    swept = {r.data.tags.get("dvc_exp_name") for r in experiment_runs(repo) if r.data.tags.get("stage") == "sweep"}
    assert not swept & set(queued), swept
    # Two workers finished together: each registered its pick as a candidate (a version per checkpoint: a pick
    # registered before is that version), and @champion (moved under the repository's lock) is the best on
    # validation of every version trained on the same data.
    client = mlflow_client(repo)
    versions = client.search_model_versions("name = 'cxr-pneumonia'")
    champion = client.get_model_version_by_alias("cxr-pneumonia", "champion")
    compares = [r for r in experiment_runs(repo) if r.data.tags.get("stage") == "compare"]
    registered = [
        r.data.tags.get("registered_model")
        for r in compares
        if r.info.run_name.endswith(tuple(f"[{n}]" for n in queued))
    ]
    assert len(registered) == 2 and all(str(x).startswith("cxr-pneumonia/") for x in registered), registered
    digests = [v.tags["checkpoint_sha256"] for v in versions]
    assert len(set(digests)) == len(digests), [v.version for v in versions]
    same_data = [float(v.tags["val_auc"]) for v in versions if v.tags["data_version"] == champion.tags["data_version"]]
    assert float(champion.tags["val_auc"]) == max(same_data), (champion.version, same_data)
    # Nothing was left behind in the temporary copies' own stores.
    assert not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))


def git_clone(repo: Path, dest: Path) -> Path:
    """A clone as users get one: git's files and the committed dvc.lock, no DVC cache (no remote)."""
    run(["git", "clone", "-q", str(repo), str(dest)], dest.parent)
    install_plots_template(dest)  # what `make install` does in a clone
    assert not (dest / ".dvc" / "cache").exists() and not (dest / "models").exists()
    return dest


@pytest.mark.timeout(2700)  # two whole pipelines when it runs first (the module's fixture, then the clone)
def test_fresh_clone_repro_gives_the_committed_bytes(pipeline, tmp_path):
    # Same code, params, data and seed: the same models (dvc.lock hashes), metrics, plots, reports
    # and figures, so rerunning on a clone leaves git clean and a second run has nothing to do.
    repo = pipeline["repo"]
    clone = git_clone(repo, tmp_path / "clone")
    first = run(["dvc", "repro"], clone, timeout=1800)
    # Every stage with a DVC-cached output reruns (sweep too: its kept model is cached); compare, plots and
    # params, whose outputs are all in git and whose deps come back with the same hashes, are skipped.
    assert set(STAGES) - {"compare", "params", "plots"} <= ran_stages(first.stdout)
    status = run(["git", "status", "--porcelain"], clone).stdout
    assert status == "", f"dvc repro on a fresh clone changed tracked files:\n{status}"
    assert (clone / "dvc.lock").read_text() == run(["git", "show", "HEAD:dvc.lock"], clone).stdout
    assert ran_stages(run(["dvc", "repro"], clone).stdout) == set()
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    # Outside an experiment, a training run is named after the commit it trained.
    commit = run(["git", "rev-parse", "--short=7", "HEAD"], clone).stdout.strip()
    trained = [r for r in experiment_runs(clone) if r.data.tags.get("stage") == "train"]
    assert sorted(r.info.run_name for r in trained if r.data.tags["model"] in MODELS) == sorted(
        f"{m} [{commit}]" for m in MODELS
    )


def _exp_names(repo: Path) -> dict:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {e.get("name"): e["revs"][0]["data"] for rev in shown for e in (rev.get("experiments") or [])}


def test_exp_run_on_a_fresh_clone_is_saved(pipeline, tmp_path):
    # The lock names DVC-cached outputs this clone lacks; the experiment must still be saved and
    # listed (it once failed at the end, resolving figures/sweep/heatmap.png through the cache). With a
    # target, only its upstream reruns; without one, the baseline itself (make_repo's shipped lock, no
    # cache) and `make real` (tests/test_make_real.py) are such runs, each checked in `dvc exp show`.
    fresh_clone = git_clone(pipeline["repo"], tmp_path / "clone")
    name, args = "clone-target", ["-S", "lr=1e-4", "evaluate@cnn"]
    out = run(["dvc", "exp", "run", "-n", name, *args], fresh_clone, timeout=1800)
    assert "sweep" not in ran_stages(out.stdout)
    assert "ERROR" not in out.stdout + out.stderr, out.stderr[-3000:]
    exps = _exp_names(fresh_clone)
    assert name in exps, sorted(exps)
    params = exps[name]["params"]["params.yaml"]["data"]
    assert float(params["lr"]) == pytest.approx(1e-4)
    assert "cnn" in exps[name]["metrics"]["metrics/headline.json"]["data"]["val_auc"]


ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-B]|[=>78])")


def terminal_screen(cmd: list[str], cwd: Path, columns: int = 160, rows: int = 40, timeout: float = 300) -> list[str]:
    """What ``cmd`` shows in a ``columns`` x ``rows`` terminal (a pseudo-terminal, TERM=xterm, DVC's default
    pager), as plain lines; a pager still open once the output settles is answered with ``q``."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    e = env()
    for k in ("DVC_PAGER", "PAGER", "LESS", "COLUMNS", "LINES"):
        e.pop(k, None)
    e["TERM"] = "xterm"
    pid, fd = pty.fork()
    if pid == 0:  # the child: size its terminal before anything queries it, then become cmd
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.chdir(cwd)
        os.execvpe(cmd[0], cmd, e)
    out, deadline, quiet = b"", time.monotonic() + timeout, 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                quiet += 1
                if quiet >= 4 and out:  # 2 s without output: a pager waiting for a key
                    os.write(fd, b"q")
                    quiet = 0
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out, quiet = out + chunk, 0
        else:
            raise AssertionError(f"{' '.join(cmd)} still running after {timeout} s:\n{out[-3000:]!r}")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out[-3000:]
    text = ANSI.sub("", out.decode("utf-8", "replace")).replace("\r", "")
    # less marks a chopped line with '>' in the last column, and ends with its (END) prompt.
    return [line.rstrip() for line in text.split("\n") if line.strip() and "(END)" not in line]


def test_mlflow_server_rest_search(pipeline, tmp_path):
    db = tmp_path / "mlflow.db"  # the shared repo's store, copied: a server may write to the one it serves
    shutil.copyfile(pipeline["repo"] / "mlflow.db", db)
    args = ["server", "--backend-store-uri", f"sqlite:///{db}"]
    with mlflow_process(args, cwd=tmp_path, env=env(), log=tmp_path / "server.log") as base:

        def post(path, body):
            req = urllib.request.Request(
                f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=chest-xray-pneumonia", timeout=30
        ) as r:
            exp_id = json.loads(r.read())["experiment"]["experiment_id"]
        found = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 500})
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found["runs"]]
        baseline = [t.get("stage") == "train" and t.get("dvc_exp_name") == "baseline" for t in tags]
        runs = [r for r, b in zip(found["runs"], baseline) if b]
        assert sorted(t["model"] for t, b in zip(tags, baseline) if b) == sorted(MODELS)
        param_keys = {frozenset(p["key"] for p in r["data"]["params"]) for r in runs}
        metric_keys = {frozenset(m["key"] for m in r["data"]["metrics"]) for r in runs}
        assert len(param_keys) == 1, param_keys
        assert len(metric_keys) == 1, metric_keys
        # A training run charts its curves and a few final values, and evaluate adds its headline test results
        # (the runs table shows them beside the params); the evaluation is a run nested under it.
        keys = {k for k in next(iter(metric_keys)) if not k.startswith("system/")}  # its own tab
        headline = {f"test_{k}" for k in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity")}
        curves = {f"epoch/{k}" for k in ("train_loss", "val_loss", "val_auc")}  # the UI charts the section first
        assert curves | {"threshold"} | headline <= keys, sorted(keys)
        assert len(keys) <= 16 and not any(k.startswith("synthetic_shift_") for k in keys), sorted(keys)
        evaluations = {t["model"]: t.get("mlflow.parentRunId") for t in tags if t.get("stage") == "evaluate"}
        by_id = {r["info"]["run_id"]: t["model"] for r, t in zip(found["runs"], tags) if t.get("stage") == "train"}
        assert {m: by_id.get(parent) for m, parent in evaluations.items() if m in MODELS} == {m: m for m in MODELS}
        # Per-epoch history: step = epoch.
        run_id = runs[0]["info"]["run_id"]
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=epoch/val_loss", timeout=30
        ) as r:
            hist = json.loads(r.read())["metrics"]
        assert [m["step"] for m in hist] == list(range(1, len(hist) + 1))
        # The README's link, in a browser: the runs table's saved view shows the training runs alone, each
        # model's params beside its test results and threshold, none of them to expand.
        link = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\S+viewStateShareKey=\S+)", README.read_text())
        assert link, "the README gives no link to the runs table's saved view"
        assert link[1].startswith(f"/#/experiments/{exp_id}/"), (link[1], exp_id)
        dom = dump_dom(base + link[1], tmp_path, "--window-size=1700,600", budget_ms=30000)
        header_ids = set(re.findall(r'col-id="((?:params|metrics)\.`[^`]+`)"', html.unescape(dom)))
        assert {f"params.`{k}`" for k in RUNS_VIEW["params"]} | {f"metrics.`{k}`" for k in RUNS_VIEW["metrics"]} <= (
            header_ids
        ), sorted(header_ids)
        names = {f"{m} [baseline]" for m in MODELS}
        assert all(n in dom for n in names) and "compare [baseline]" not in dom, [n for n in names if n not in dom]


def test_exp_run_with_two_devices_on_cpu(pipeline, tmp_path):
    """``dvc exp run -S train.devices=2 train@cnn``: the stage runs as 2 gloo processes under torchrun
    and the experiment holds its metrics, like a one-device one (on a copy of the baseline: only it runs)."""
    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    out = run(["dvc", "exp", "run", "-n", "ddp2", "-S", "train.devices=2", "train@cnn"], repo, timeout=900)
    # params resolves train.devices into resolved/train/cnn.json, train@cnn's dependency
    assert ran_stages(out.stdout) == {"params", "train@cnn"}, out.stdout[-3000:]
    assert "--nproc-per-node=2" in out.stdout and "x 2 processes (DDP)" in out.stdout, out.stdout[-3000:]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "ddp2" in text and "val_auc" in text
    metrics = json.loads((repo / "metrics/train/cnn.json").read_text())
    assert 0 <= metrics["val_auc"] <= 1 and metrics["epochs_run"] >= 1
    runs = [r for r in experiment_runs(repo) if r.data.tags.get("dvc_exp_name") == "ddp2"]
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"  # one MLflow run, from rank 0
    assert runs[0].data.tags["stage"] == "train" and runs[0].data.tags["model"] == "cnn"


# A model as a contributor adds one: its own module (registered on import) and its entry in params.yaml.
NEW_MODEL = '''"""tinynet: four filters and a logit, added by tests/test_workflows.py as a contributor adds a model."""

from torch import nn

from cxr.models.registry import register_model


@register_model(
    "tinynet",
    input_spec=lambda weights: {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "image_size": 32},
    channels_last=False,
    cam_layer=lambda m: m[0],
    description="test model: one 3x3 convolution, global pooling, one logit",
)
def _build_tinynet(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)]
    return nn.Sequential(*layers)
'''
NEW_ENTRY = (
    "  tinynet:\n    epochs: 1\n    image_size:\n    scheduler:\n    pretrained:\n    weights:\n    options: {}\n"
)


def test_a_new_model_is_its_module_and_its_params_entry(pipeline, tmp_path):
    """On a copy of the baseline, the model's module and its params.yaml entry, nothing else: it trains,
    is evaluated and is in every DVC chart in its own colour; no other model's settings change. Only its
    stages and the charts run (--single-item): a minute, not a pipeline."""
    from cxr.plots import model_color

    repo = copy_repo(pipeline["repo"], tmp_path / "repo")
    (repo / "src/cxr/models/tinynet.py").write_text(NEW_MODEL)
    params = (repo / "params.yaml").read_text()
    assert "\nmlflow:" in params
    (repo / "params.yaml").write_text(params.replace("\nmlflow:", f"{NEW_ENTRY}\nmlflow:", 1))
    run(["git", "add", "src/cxr/models/tinynet.py", "params.yaml"], repo)
    run(["git", "commit", "-q", "-m", "tinynet"], repo)
    out = run(["dvc", "repro", "--single-item", "params", "train@tinynet", "evaluate@tinynet", "plots"], repo)
    assert ran_stages(out.stdout) == {"params", "train@tinynet", "evaluate@tinynet", "plots"}, out.stdout[-3000:]
    changed = run(["git", "status", "--porcelain"], repo).stdout.split("\n")
    # The others' resolved settings and the weights list are the same bytes (their code dep, the src/cxr/models
    # folder, did change: a full `dvc repro` retrains them, as after any change to the model code)
    assert not [line for line in changed if "resolved/" in line and "tinynet" not in line], changed
    for chart in ("roc", "confusion", "history"):
        rows = pd.read_csv(repo / f"plots/models/{chart}.csv")
        assert {*MODELS, TUNED, "tinynet"} == set(rows["model"]), chart
        assert set(rows.loc[rows["model"] == "tinynet", "color"]) == {model_color("tinynet")}
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    assert any(r.get("model") == "tinynet" for r in shown["ROC (test)"][0]["content"]["data"]["values"])
    assert run(["git", "diff", "HEAD~1", "--stat", "--", "dvc.yaml", ".dvc/plots"], repo).stdout == ""
