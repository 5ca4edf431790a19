"""``@champion`` under concurrent queue workers, against a real ``mlflow server`` on 127.0.0.1.

Each worker is a separate Python process that, like a queued experiment's compare stage finishing at
the same moment as the others, calls ``register_candidate`` on the same data version with its own
validation value and the shared lock file. The workers' hooks (in WORKER) only record when they are
inside the lock and widen the window between reading the champion and moving the alias.

1. With the shared lock: the critical sections do not overlap (and none starts while this test holds
   the lock), every worker registers a version, each one's Outcome is what a one-at-a-time run in
   version order gives, and ``@champion`` ends at the best value.
2. The control, one lock file per worker and no registry lock (workers that shared no lock) and a barrier after
   reading the champion: every worker saw "no champion yet", which 1 rules out; the checks of 1 can fail.
3. Reading the champion times out: the registration fails rather than promote as if there were none.

    pytest tests/evaluation/test_promotion_server.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import mlflow_process

pytestmark = pytest.mark.slow

DATA_VERSION = "v1"
# What these tests check is the lock, not a client's patience: the tracker's 5-s fail-fast timeout
# (cxr.tracking) is too short for a server answering on a machine loaded by the rest of the suite.
SLOW_SERVER_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


@pytest.fixture(autouse=True)
def _patient_client(monkeypatch):
    for k, v in SLOW_SERVER_ENV.items():
        monkeypatch.setenv(k, v)


WORKER = r"""
import contextlib, json, os, sys, time
from pathlib import Path

args = json.loads(sys.argv[1])
sync, i, n = Path(args["sync"]), args["index"], args["n"]


def mark(what):
    (sync / f"{what}-{i}").touch()


def wait_for(what, count):
    deadline = time.monotonic() + 120
    while len(list(sync.glob(what))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {i}: waited 120 s for {what}")
        time.sleep(0.02)


from cxr.evaluation import promotion as P
from cxr.tracking import make_tracker

times = {}
original_locked, original_decide = P.locked, P.decide


@contextlib.contextmanager
def locked(lock_path):
    mark("waiting")
    with original_locked(lock_path):
        times["t_in"] = time.monotonic()
        mark("inside")
        yield
        times["t_out"] = time.monotonic()


def decide(*a, **k):
    out = original_decide(*a, **k)
    if args["barrier"]:  # every worker has read the champion before any of them goes on
        mark("decided")
        wait_for("decided-*", n)
        time.sleep(0.5 * i)  # then register one after another: the race is in the reads only
    else:
        time.sleep(0.3)  # widen the window between reading the champion and moving the alias
    return out


P.locked, P.decide = locked, decide
if args["barrier"]:  # the control shares no lock at all: not the file, nor the registry's (a remote server's)
    P.Registry.lock = lambda self, name: contextlib.nullcontext()
tracker = make_tracker(args["experiment"], os.environ["MLFLOW_TRACKING_URI"])
assert tracker.active, "the worker cannot reach the server"
mark("ready")
wait_for("go", 1)
outcome = P.register_candidate(
    tracker,
    args["checkpoint"],
    registered_name=args["name"],
    alias="champion",
    select_metric="val_auc",
    value=args["value"],
    report=args["report"],
    lock_path=Path(args["lock"]),
)
Path(args["result"]).write_text(
    json.dumps({"version": outcome.version, "promoted": outcome.promoted, "message": outcome.message, **times})
)
"""


def _wait(cond, what: str, procs=(), timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            assert p.poll() in (None, 0), f"{what}: a process exited with {p.returncode}:\n{_tail(p)}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)


def _tail(p) -> str:
    log = getattr(p, "log_path", None)
    return Path(log).read_text()[-3000:] if log else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with a sqlite store and proxied artifacts (clients upload through it): its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    args = ["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    with mlflow_process(
        [*args, "--artifacts-destination", str(root / "artifacts")], cwd=root, env=env, log=root / "server.log"
    ) as base:
        yield base


def _report() -> dict:
    """The evaluate stage's metrics, as much of them as the version's description reads."""
    at = {
        k: {"value": 0.8, "ci_low": 0.77, "ci_high": 0.83}
        for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
    }
    return {"n": 624, "confidence": 0.95, "at_val_threshold": at}


def _training_runs(tmp_path: Path, server: str, experiment: str, values: list[float]) -> list[tuple[Path, str]]:
    """One checkpoint and its finished training run (tagged and with params as src/train.py logs them) per
    worker: (checkpoint folder, run id)."""
    import torch

    from cxr import checkpoint
    from cxr.models import build_model
    from cxr.tracking import make_tracker
    from toydata import card_for

    tracker = make_tracker(experiment, server)
    assert tracker.active, "the test cannot reach the server"
    out = []
    for i, value in enumerate(values):
        torch.manual_seed(i)
        model = build_model("cnn", image_size=16)
        train_params = {"lr": 0.001 * (i + 1), "seed": i}  # distinct: each checkpoint finds its own run
        card = card_for(model, train_params=train_params, data_version=DATA_VERSION, val_auc=value)
        checkpoint.save(_checkpoint(tmp_path, i), model, card)
        with tracker.start_run(f"train-{i}", tags={"model": "cnn", "stage": "train", "data_version": DATA_VERSION}):
            tracker.log_params(train_params)
            out.append((_checkpoint(tmp_path, i), tracker.run_id))
    return out


def _checkpoint(tmp_path: Path, i: int) -> Path:
    return tmp_path / "models" / f"exp{i}" / "cnn"


def _race(tmp_path: Path, server: str, name: str, values: list[float], *, shared_lock: bool) -> dict:
    """One worker per value, started at the same moment: {"results": {index: {version, promoted, message,
    t_in, t_out}}, "runs": [(checkpoint, training run id)]}. With ``shared_lock`` this test holds the
    lock until every worker waits for it."""
    sync = tmp_path / "sync"
    sync.mkdir()
    lock = tmp_path / "dvc-root" / ".dvc" / "tmp" / "cxr-champion.lock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=server, MLFLOW_REGISTRY_URI=server, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(SLOW_SERVER_ENV)
    n, procs = len(values), []
    try:
        for i, value in enumerate(values):  # first: their imports overlap the training runs' logging
            args = {
                "sync": str(sync),
                "index": i,
                "n": n,
                "barrier": not shared_lock,
                "experiment": name,
                "name": name,
                "checkpoint": str(_checkpoint(tmp_path, i)),
                "value": value,
                "report": _report(),
                "lock": str(lock if shared_lock else lock.with_name(f"worker-{i}.lock")),
                "result": str(tmp_path / f"result-{i}.json"),
            }
            log_path = tmp_path / f"worker-{i}.log"
            with log_path.open("w") as log:  # the worker has its own copy
                p = subprocess.Popen(
                    [sys.executable, "-c", WORKER, json.dumps(args)],
                    cwd=tmp_path,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            p.log_path = log_path
            procs.append(p)
        runs = _training_runs(tmp_path, server, name, values)
        _wait(lambda: len(list(sync.glob("ready-*"))) == n, "workers ready", procs)
        if shared_lock:
            from mlflow import MlflowClient

            from cxr.locks import locked

            with locked(lock):
                (sync / "go").touch()
                _wait(lambda: len(list(sync.glob("waiting-*"))) == n, "workers at the lock", procs)
                time.sleep(1.0)
                # The lock holds them all, although each has logged its model on the server already.
                assert not list(sync.glob("inside-*"))
                assert MlflowClient(tracking_uri=server).search_model_versions(f"name = '{name}'") == []
        else:
            (sync / "go").touch()
        for p in procs:
            try:
                rc = p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker did not finish in 180 s:\n{_tail(p)}")
            assert rc == 0, _tail(p)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = {i: json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(n)}
    return {"results": results, "runs": runs}


def _one_at_a_time(results: dict, name: str, values: list[float]) -> dict:
    """{index: (promoted, message)} that running the workers one after another in version order gives."""
    champion, want = None, {}
    for i in sorted(results, key=lambda i: int(results[i]["version"])):
        v, value = results[i]["version"], values[i]
        where = f"registered cnn as {name} version {v}"
        if champion is None:
            want[i] = (True, f"{where} and moved @champion to it: no champion yet")
        elif value > champion[1]:
            want[i] = (
                True,
                f"{where} and moved @champion to it: val_auc {value:.4f} beats the champion's {champion[1]:.4f}",
            )
        else:
            want[i] = (
                False,
                f"{where}; @champion stays at version {champion[0]}: val_auc {value:.4f} does not beat "
                f"the champion's {champion[1]:.4f}",
            )
        if want[i][0]:
            champion = (v, value)
    return want


def test_concurrent_workers_sharing_the_lock_promote_only_the_best(server, tmp_path):
    name, values = "cxr-race-locked", [0.81, 0.93, 0.97, 0.74]  # the best is neither first nor last
    race = _race(tmp_path, server, name, values, shared_lock=True)
    results, runs = race["results"], race["runs"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    every = list(range(1, len(values) + 1))
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")) == every
    assert sorted(int(r["version"]) for r in results.values()) == every
    # The critical sections did not overlap, and the versions were numbered in the order they ran.
    spans = sorted((r["t_in"], r["t_out"], int(r["version"])) for r in results.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert [s[2] for s in spans] == every
    # Each worker's Outcome is the one it would have had alone, in turn.
    assert {i: (r["promoted"], r["message"]) for i, r in results.items()} == _one_at_a_time(results, name, values)
    best = max(range(len(values)), key=values.__getitem__)
    assert max((int(r["version"]), i) for i, r in results.items() if r["promoted"])[1] == best
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == results[best]["version"]
    assert float(champion.tags["val_auc"]) == pytest.approx(values[best])
    assert champion.tags["data_version"] == DATA_VERSION
    # Every version comes from its own training run, which names it.
    for i, (_, run_id) in enumerate(runs):
        v = client.get_model_version(name, results[i]["version"])
        assert v.run_id == run_id and v.tags["training_run_id"] == run_id
        assert float(v.tags["val_auc"]) == pytest.approx(values[i])
        assert client.get_run(run_id).data.tags["registered_model"] == f"{name}/{results[i]['version']}"


def test_workers_without_a_shared_lock_all_see_no_champion(server, tmp_path):
    """The control: a lock file per worker lets every one read the champion before any moves it."""
    name, values = "cxr-race-unlocked", [0.81, 0.97]
    results = _race(tmp_path, server, name, values, shared_lock=False)["results"]
    assert all(r["promoted"] and r["message"].endswith(": no champion yet") for r in results.values()), results
    spans = sorted((r["t_in"], r["t_out"]) for r in results.values())
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))  # overlapping critical sections
    assert {i: (r["promoted"], r["message"]) for i, r in results.items()} != _one_at_a_time(results, name, values)


def test_a_champion_that_cannot_be_read_is_not_taken_for_none(server, tmp_path, monkeypatch):
    """Reading @champion times out (a loaded server; the tracker allows 5 s and no retries): the registration
    fails, instead of promoting a worse model as if there were no champion yet."""
    import requests
    from mlflow import MlflowClient

    from cxr.evaluation.promotion import RegistryError, register_candidate
    from cxr.tracking import make_tracker

    name, values = "cxr-unreadable-champion", [0.95, 0.80]
    runs = _training_runs(tmp_path, server, name, values)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", server)
    tracker = make_tracker(name, server)
    kw = dict(registered_name=name, alias="champion", select_metric="val_auc", report=_report())
    kw["lock_path"] = tmp_path / "cxr-champion.lock"
    first = register_candidate(tracker, runs[0][0], value=values[0], **kw)
    assert first.promoted and first.message.endswith("no champion yet")

    real = requests.Session.request

    def alias_read_times_out(self, method, url, *args, **kwargs):
        if method == "GET" and "/registered-models/alias" in url:
            raise requests.exceptions.ReadTimeout(f"HTTPConnectionPool: Read timed out ({url})")
        return real(self, method, url, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(requests.Session, "request", alias_read_times_out)
        with pytest.raises(RegistryError, match="timeout"):
            register_candidate(tracker, runs[1][0], value=values[1], **kw)
    client = MlflowClient(tracking_uri=server)
    assert client.get_model_version_by_alias(name, "champion").version == first.version
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [first.version]
    # An existing model without the alias (a registration cut short before the alias moved) has no champion.
    client.delete_registered_model_alias(name, "champion")
    again = register_candidate(tracker, runs[1][0], value=values[1], **kw)
    assert again.promoted and again.message.endswith("no champion yet")
