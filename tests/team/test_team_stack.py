"""The team stack for real, on loopback: ``make team-up`` (PostgreSQL, SeaweedFS's S3, ``mlflow server`` with
basic-auth), two users' clones, ``dvc push/pull``, ``dvc exp push/pull``, a race of two promotions, the
access rules, and ``make team-down``. One stack for the module; the tests run in file order.

1. alice and bob each run ``dvc exp run train@cnn -S lr=...`` at the same time in their own clone: both
   runs FINISHED in the one shared experiment, in PostgreSQL, their artifacts in the S3 store, no mlflow.db.
2. ``dvc push`` (the lead's tiny run: data and the cnn model) and ``dvc pull`` in fresh clones: the same bytes;
   bob's ``dvc exp push`` and alice's ``dvc exp pull``: alice's ``dvc exp show`` lists bob's experiment.
3. Two promotions at once, one per user and clone (each with its own file lock): the worse one reads the
   champion first and is held after its read until the better one is at the registry lock (or, without
   that lock, done). ``@champion`` ends on the better model and never goes back to the worse one.
4. Anonymous requests get 401, MLflow's well-known default admin password does not work, a wrong S3 secret is
   refused, a user's keys reach the DVC bucket only, bob cannot write into alice's own experiment.
5. ``make team-down``: no process of the stack and no port of it left.

    pytest -m team
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pipeline_repo import BIN, REPO_ROOT, env, install_plots_template, make_repo, run, tiny

pytestmark = [pytest.mark.team, pytest.mark.slow]

EXPERIMENT, MODEL = "chest-xray-pneumonia", "cxr-pneumonia"
MAKE = ["make", "-o", ".venv/.installed"]  # the venv running the tests is installed; never reinstall here


def make(target: str, team_dir: Path) -> subprocess.CompletedProcess:
    return run([*MAKE, target, f"TEAM_DIR={team_dir}", f"BIN={BIN}"], REPO_ROOT, timeout=300)


@pytest.fixture(scope="module")
def stack():
    """``make team-up`` in a fresh TEAM_DIR (readable by the postgres user): its state, secrets, output."""
    team_dir = Path(tempfile.mkdtemp(prefix="cxr-team-test-"))
    team_dir.chmod(0o755)
    try:
        out = make("team-up", team_dir).stdout
        st = json.loads((team_dir / "stack.json").read_text())
        secrets = json.loads((team_dir / "secrets" / "secrets.json").read_text())
        yield {"dir": team_dir, "state": st, "secrets": secrets, "out": out}
    finally:
        subprocess.run([*MAKE, "team-down", f"TEAM_DIR={team_dir}", f"BIN={BIN}"], cwd=REPO_ROOT, env=env())
        shutil.rmtree(team_dir, ignore_errors=True)


def user_env(stack: dict, user: str) -> dict:
    """pipeline_repo.env() plus what ``source <team>/secrets/<user>.env`` exports."""
    e = env()
    for line in (stack["dir"] / "secrets" / f"{user}.env").read_text().splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            e[key] = value
    e["TEAM_DIR"] = str(stack["dir"])  # python -m cxr.team remote reads the stack's state there
    return e


def run_as(stack: dict, user: str, cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=user_env(stack, user), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{user}: {' '.join(cmd)} exited {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def client_as(stack: dict, user: str, monkeypatch):
    """An MlflowClient of the server as ``user`` (MLflow's credential variables, restored after the test)."""
    from mlflow import MlflowClient

    password = stack["secrets"]["admin"] if user == "admin" else stack["secrets"]["users"][user]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(tracking_uri=stack["state"]["tracking_uri"])


def s3_client(stack: dict, user: str, secret: str | None = None):
    import boto3

    key, real = stack["secrets"]["s3"][user]
    return boto3.client(
        "s3",
        endpoint_url=stack["state"]["s3_endpoint"],
        aws_access_key_id=key,
        aws_secret_access_key=secret or real,
        region_name="us-east-1",
    )


def test_team_up_prints_where_and_is_idempotent(stack):
    out, st = stack["out"], stack["state"]
    for what in (st["tracking_uri"], st["s3_endpoint"], str(stack["dir"] / "secrets")):
        assert what in out
    for secret in (stack["secrets"]["admin"], *stack["secrets"]["users"].values()):
        assert secret not in out
    pids = {s: (stack["dir"] / "pids" / f"{s}.pid").read_text() for s in ("postgres", "s3", "mlflow")}
    again = make("team-up", stack["dir"]).stdout
    assert st["tracking_uri"] in again
    assert {s: (stack["dir"] / "pids" / f"{s}.pid").read_text() for s in pids} == pids  # nothing started twice
    assert oct((stack["dir"] / "secrets").stat().st_mode & 0o777) == "0o700"


@pytest.fixture(scope="module")
def clones(stack, tmp_path_factory):
    """The lead's workspace (the shipped files, ``make_repo``) runs ``dvc exp run train@cnn`` at tiny sizes as
    alice, commits it, adds the DVC remote and pushes git to a bare ``origin`` and the data and model to S3;
    alice and bob each ``git clone`` origin and ``dvc pull`` as themselves. {"lead", "alice", "bob", "origin"}."""
    root = tmp_path_factory.mktemp("team")
    lead = make_repo(root / "lead")
    run_as(stack, "alice", ["dvc", "exp", "run", "train@cnn", "-n", "baseline", *tiny()], lead)
    run_as(stack, "alice", [sys.executable, "-m", "cxr.team", "remote", "alice"], lead)
    run(["git", "add", "-A"], lead)
    run(["git", "commit", "-q", "-m", "baseline and the DVC remote team"], lead)
    run_as(stack, "alice", ["dvc", "push", "train@cnn", "--with-deps"], lead)  # what was run
    origin = root / "origin.git"
    run(["git", "clone", "-q", "--bare", str(lead), str(origin)], root)
    out = {"lead": lead, "origin": origin}
    for user in ("alice", "bob"):
        run(["git", "clone", "-q", str(origin), str(root / user)], root)
        install_plots_template(root / user)  # what make install writes in a clone
        run_as(stack, user, [sys.executable, "-m", "cxr.team", "remote", user], root / user)
        run_as(stack, user, ["dvc", "pull", "train@cnn", "--with-deps"], root / user)
        out[user] = root / user
    return out


def files(root: Path, under: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / under).rglob("*")) if p.is_file()}


def test_dvc_pull_in_a_fresh_clone_gives_the_pushed_bytes(clones):
    for user in ("alice", "bob"):
        for under in ("data/cache", "models/cnn"):
            pulled = files(clones[user], under)
            assert pulled and pulled == files(clones["lead"], under), f"{user}: {under} differs from the push"
        assert (clones[user] / ".dvc" / "config.local").is_file()
        assert "secret_access_key" not in (clones[user] / ".dvc" / "config").read_text()


@pytest.fixture(scope="module")
def experiments(stack, clones):
    """alice and bob run ``dvc exp run train@cnn`` at the same time, each in their clone: {user: lr}."""
    lrs = {"alice": "0.002", "bob": "0.003"}
    procs = {
        user: subprocess.Popen(
            ["dvc", "exp", "run", "train@cnn", "-n", f"{user}-lr", "-S", f"lr={lr}"],
            cwd=clones[user],
            env=user_env(stack, user),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for user, lr in lrs.items()
    }
    for user, p in procs.items():
        out = p.communicate(timeout=900)[0]
        assert p.returncode == 0, f"{user}'s dvc exp run failed:\n{out[-5000:]}"
    return lrs


def test_two_users_runs_finish_in_one_experiment_in_postgres_and_s3(stack, clones, experiments, monkeypatch):
    import psycopg2

    client = client_as(stack, "admin", monkeypatch)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.model = 'cnn' and tags.stage = 'train'")
    mine = {r.data.tags.get("dvc_exp_name"): r for r in runs}
    assert {"alice-lr", "bob-lr"} <= set(mine), sorted(mine)
    ids = [mine[f"{u}-lr"].info.run_id for u in ("alice", "bob")]
    assert [mine[f"{u}-lr"].data.params["lr"] for u in ("alice", "bob")] == list(experiments.values())
    with psycopg2.connect(  # the server's own database: the runs are rows there
        host="127.0.0.1", port=stack["state"]["ports"]["postgres"], user="mlflow",
        password=stack["secrets"]["postgres"], dbname="mlflow",
    ) as con, con.cursor() as cur:  # fmt: skip
        cur.execute("SELECT run_uuid, status, experiment_id FROM runs WHERE run_uuid = ANY(%s)", (ids,))
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    assert rows == {i: ("FINISHED", int(exp.experiment_id)) for i in ids}
    keys = [
        o["Key"]
        for page in s3_client(stack, "mlflow").get_paginator("list_objects_v2").paginate(Bucket="cxr-mlflow")
        for o in page.get("Contents", [])
    ]
    for run_id in ids:
        assert any(f"/{run_id}/artifacts/" in k and k.endswith("model.json") for k in keys), run_id
    for user in ("alice", "bob"):
        assert not list(clones[user].rglob("mlflow.db")), f"{user}'s clone has an mlflow.db"


def test_exp_push_and_pull_share_an_experiment(stack, clones, experiments):
    run_as(stack, "bob", ["dvc", "exp", "push", "origin", "bob-lr"], clones["bob"])
    run_as(stack, "alice", ["dvc", "exp", "pull", "origin", "bob-lr"], clones["alice"])
    shown = run_as(stack, "alice", ["dvc", "exp", "show", "--csv", "--no-pager"], clones["alice"]).stdout
    names = {line.split(",")[0] for line in shown.splitlines()}
    assert {"alice-lr", "bob-lr"} <= names, shown[:2000]


# One promotion, as alice or bob in their own clone: register_candidate with the pipeline's own arguments,
# its file lock in its own clone (two machines share none). The worse one is held after reading the champion
# until the better one is either waiting at the registry lock or done.
WORKER = r"""
import json, sys, time
from pathlib import Path
from cxr.evaluation import promotion as P
from cxr.tracking import registry_lock as R
from cxr.tracking import make_tracker

a = json.loads(sys.argv[1])
sync = Path(a["sync"])
decide, try_create = P.decide, R._try_create

def held_decide(*args, **kwargs):
    out = decide(*args, **kwargs)
    if a["hold"]:
        (sync / "worse-read").touch()
        deadline = time.monotonic() + 120
        while not ((sync / "better-blocked").exists() or (sync / "better-done").exists()):
            assert time.monotonic() < deadline, "the better promotion neither waited nor finished"
            time.sleep(0.05)
    return out

def watched_try_create(*args, **kwargs):
    got = try_create(*args, **kwargs)
    if not got and not a["hold"]:
        (sync / "better-blocked").touch()
    return got

P.decide, R._try_create = held_decide, watched_try_create
if not a["hold"]:
    while not (sync / "worse-read").exists():
        time.sleep(0.05)
tracker = make_tracker(a["experiment"])
assert tracker.active, "no tracking server"
with tracker.start_run("compare [race]", tags={"stage": "compare"}):
    outcome = P.register_candidate(
        tracker, a["checkpoint"], registered_name=a["model"], alias="champion", select_metric="val_auc",
        value=a["value"], report=a["report"], lock_path=Path(a["lock"]),
    )
(sync / ("better-done" if not a["hold"] else "worse-done")).touch()
print(json.dumps({"version": outcome.version, "promoted": outcome.promoted, "message": outcome.message}))
"""


def _report() -> dict:
    at = {
        k: {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}
        for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
    }
    return {"n": 40, "confidence": 0.95, "at_val_threshold": at}


def test_two_promotions_at_once_the_champion_ends_on_the_better(stack, clones, experiments, tmp_path, monkeypatch):
    client = client_as(stack, "admin", monkeypatch)
    seen: list[str] = []
    stop = threading.Event()

    def watch():  # every alias value the registry shows while the two run
        from mlflow.exceptions import MlflowException

        while not stop.is_set():
            try:
                v = client.get_model_version_by_alias(MODEL, "champion").version
                if not seen or seen[-1] != v:
                    seen.append(v)
            except MlflowException:
                pass
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    values = {"alice": 0.70, "bob": 0.90}  # alice's the worse, read first
    procs = {}
    for user, value in values.items():
        args = {
            "sync": str(tmp_path),
            "hold": user == "alice",
            "experiment": EXPERIMENT,
            "model": MODEL,
            "checkpoint": str(clones[user] / "models" / "cnn"),
            "value": value,
            "report": _report(),
            "lock": str(clones[user] / ".dvc" / "tmp" / "cxr-champion.lock"),
        }
        procs[user] = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(args)],
            cwd=clones[user],
            env=user_env(stack, user),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outs = {}
    for user, p in procs.items():
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, f"{user}'s promotion failed:\n{out[-4000:]}"
        outs[user] = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.3)
    stop.set()
    watcher.join()
    better, worse = outs["bob"]["version"], outs["alice"]["version"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == better, outs
    assert better in seen and worse not in seen[seen.index(better) :], seen
    assert (tmp_path / "better-blocked").exists(), "the better promotion never waited for the registry lock"
    assert client.search_registered_models(f"name = '{MODEL}.lock'") == []  # released


def test_access_is_kept_to_each_user(stack, monkeypatch):
    import botocore.exceptions
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = stack["state"]["tracking_uri"]
    search = f"{uri}/api/2.0/mlflow/experiments/search"
    assert requests.get(search, params={"max_results": 1}, timeout=10).status_code == 401
    assert (
        requests.get(search, params={"max_results": 1}, auth=("admin", "password1234"), timeout=10).status_code == 401
    )
    assert requests.get(search, params={"max_results": 1}, auth=("admin", stack["secrets"]["admin"]), timeout=10).ok
    assert "password1234" not in (stack["dir"] / "secrets" / "basic_auth.ini").read_text()

    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        s3_client(stack, "alice", secret="not-alices-secret").list_objects_v2(Bucket="cxr-dvc")
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):  # artifacts: the server's only
        s3_client(stack, "alice").list_objects_v2(Bucket="cxr-mlflow")

    def as_user(user: str) -> MlflowClient:
        return client_as(stack, user, monkeypatch)

    own = as_user("alice").create_experiment("alice-scratch")
    as_user("alice").create_run(own)
    with pytest.raises(MlflowException, match="Permission denied|PERMISSION_DENIED"):
        as_user("bob").create_run(own)
    assert as_user("bob").get_experiment(own).name == "alice-scratch"  # READ: others' work stays visible


def test_team_down_leaves_no_process_and_no_port(stack):
    import psutil

    pids = [int((stack["dir"] / "pids" / f"{s}.pid").read_text()) for s in ("postgres", "s3", "mlflow")]
    family = {c.pid for p in pids for c in [psutil.Process(p), *psutil.Process(p).children(recursive=True)]}
    ports = stack["state"]["ports"].values()
    out = make("team-down", stack["dir"]).stdout
    assert "ports still open: none" in out
    left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"still running: {left}"
    from cxr.team.stack import listening

    assert not [p for p in ports if listening(p)]
    assert not list((stack["dir"] / "pids").glob("*.pid"))
