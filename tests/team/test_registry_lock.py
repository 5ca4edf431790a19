"""cxr.tracking.registry_lock against an in-memory registry that behaves as MLflow's does (a name is created
once; deleting needs the creator): a second holder waits, a lock left by a killed holder is broken after the
lease or named in the error, a local store takes no lock. The real server: tests/team/test_team_stack.py."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST

from cxr.tracking import registry_lock as R

URI = "http://127.0.0.1:5000"


class Registry:
    """create_registered_model / get_registered_model / delete_registered_model of one user, ``who``."""

    def __init__(self, models: dict, who: str = "alice"):
        self.models, self.who, self.guard = models, who, threading.Lock()

    def as_user(self, who: str) -> Registry:
        other = Registry(self.models, who)
        other.guard = self.guard
        return other

    def create_registered_model(self, name, tags=None, description=None):
        with self.guard:
            if name in self.models:
                raise MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS)
            self.models[name] = SimpleNamespace(tags=dict(tags or {}), owner=self.who)

    def get_registered_model(self, name):
        with self.guard:
            if name not in self.models:
                raise MlflowException("missing", error_code=RESOURCE_DOES_NOT_EXIST)
            return self.models[name]

    def delete_registered_model(self, name):
        with self.guard:
            if self.models[name].owner != self.who:
                raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)
            del self.models[name]


def test_a_second_holder_waits_for_the_first(monkeypatch):
    monkeypatch.setattr(R, "POLL_S", 0.01)
    alice = Registry({})
    bob = alice.as_user("bob")
    order = []
    with R.registry_lock(alice, "m", URI) as lock:
        assert lock == "m.lock" and "m.lock" in alice.models

        def second():
            with R.registry_lock(bob, "m", URI):
                order.append("bob in")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("alice out")
    t.join(5)
    assert order == ["alice out", "bob in"]
    assert alice.models == {}  # released by each holder


def test_a_killed_holders_lock_is_broken_after_the_lease_when_allowed(monkeypatch):
    monkeypatch.setattr(R, "POLL_S", 0.01)
    reg = Registry({})
    reg.create_registered_model("m.lock", tags={"holder": "alice@host/1/0"})  # its process is gone
    with pytest.warns(UserWarning, match="alice@host/1/0"), R.registry_lock(reg, "m", URI, lease_s=0.05):
        assert reg.models["m.lock"].tags["holder"] != "alice@host/1/0"


def test_a_lock_this_user_may_not_delete_is_named_in_the_error(monkeypatch):
    monkeypatch.setattr(R, "POLL_S", 0.01)
    alice = Registry({})
    alice.create_registered_model("m.lock", tags={"holder": "alice@host/1/0"})
    with pytest.raises(R.RegistryLockError, match=r"alice@host/1/0.*delete the registered model 'm.lock'|"
                       r"held by alice@host/1/0.*'m.lock'"):  # fmt: skip
        with R.registry_lock(alice.as_user("bob"), "m", URI, lease_s=0.05):
            pass
    with pytest.raises(R.RegistryLockError, match="waited 0 s .* held by alice@host/1/0"):
        with R.registry_lock(alice.as_user("bob"), "m", URI, wait_s=0.05, lease_s=60):
            pass


def test_a_local_store_takes_no_registry_lock():
    reg = Registry({})
    with R.registry_lock(reg, "m", "sqlite:///mlflow.db") as lock:
        assert lock is None and reg.models == {}
