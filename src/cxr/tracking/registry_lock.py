"""A lock kept in the Model Registry itself: promotions serialised across machines sharing one tracking server.

    with registry_lock(client, "cxr-pneumonia", tracker.uri):   # a no-op for a local store (file lock there)
        champion = read(...); maybe_move_alias(...)

MLflow has no compare-and-set on aliases, and :func:`cxr.locks.locked` serialises the processes of one
machine only: two people's ``compare`` stages could both read the same champion and the slower one move
``@champion`` to the worse model. Creating a registered model is atomic on every MLflow store (the name
is the key; a second create fails with RESOURCE_ALREADY_EXISTS), so the registered model
``<name>.lock`` is the lock: created to take it, deleted to release it (its creator may; basic-auth gives
the creator MANAGE). A holder killed with ``-9`` leaves it behind: a waiter that has seen the same holder
for ``lease_s`` takes it for dead and deletes it when it may, else says who holds it and how to free it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Iterator

LEASE_S = 300.0  # the critical section (read the champion, register, move the alias) takes seconds
WAIT_S = 900.0
POLL_S = 0.5
REMOTE_SCHEMES = ("http://", "https://", "databricks")


class RegistryLockError(RuntimeError):
    """The registry lock could not be taken: held by someone else for too long."""


def lock_name(name: str) -> str:
    return f"{name}.lock"


def _holder(client, lock: str) -> str | None:
    """The holder tag of the lock, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(lock).tags.get("holder", "?")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _try_create(client, lock: str, holder: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock,
            tags={"holder": holder},
            description="A promotion is in progress (cxr compare); deleted when it ends. Not a model.",
        )
        return True
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise


def _break(client, lock: str, holder: str, lease_s: float) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        raise RegistryLockError(
            f"the registry lock {lock!r} has been held by {holder} for over {lease_s:.0f} s (a killed compare?) "
            f"and this user may not delete it ({exc.error_code}); its holder's user or an admin deletes the "
            f"registered model {lock!r}, then rerun"
        ) from exc
    warnings.warn(f"deleted the registry lock {lock!r} of {holder}, held for over {lease_s:.0f} s", stacklevel=3)


@contextlib.contextmanager
def registry_lock(
    client, name: str, uri: str, *, wait_s: float = WAIT_S, lease_s: float = LEASE_S
) -> Iterator[str | None]:
    """Hold ``<name>.lock`` in the registry of ``uri`` for the block (a tracking server only; a local store
    yields None at once). Raises :class:`RegistryLockError` after ``wait_s`` behind a live holder."""
    if not uri.startswith(REMOTE_SCHEMES):
        yield None
        return
    lock = lock_name(name)
    me = f"{os.environ.get('MLFLOW_TRACKING_USERNAME', '?')}@{socket.gethostname()}/{os.getpid()}/{time.time():.0f}"
    deadline = time.monotonic() + wait_s
    seen: tuple[str, float] | None = None  # (holder, when this process first saw it)
    while not _try_create(client, lock, me):
        holder = _holder(client, lock)
        now = time.monotonic()
        if holder is None:  # released between the two calls
            continue
        if seen is None or seen[0] != holder:
            seen = (holder, now)
        elif now - seen[1] > lease_s:
            _break(client, lock, holder, lease_s)
            seen = None
            continue
        if now > deadline:
            raise RegistryLockError(
                f"waited {wait_s:.0f} s for the registry lock {lock!r}, held by {holder}; "
                f"if that compare is gone, delete the registered model {lock!r} and rerun"
            )
        time.sleep(POLL_S)
    try:
        yield lock
    finally:
        try:
            client.delete_registered_model(lock)
        except Exception as exc:  # the next waiter breaks it after its lease
            warnings.warn(f"could not release the registry lock {lock!r}: {exc}", RuntimeWarning, stacklevel=3)
