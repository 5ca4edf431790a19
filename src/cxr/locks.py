"""The one file-lock implementation: an exclusive ``flock`` that the kernel drops when its holder exits.

    fd = try_lock(Path("data/resume/cnn.pt.lock"))        # None: another process holds it
    with locked(Path("mlflow.db.promote.lock")):          # waits for it
        ...

Used by the resume state (one trainer per model), the GPU claims (one process per GPU) and the Model
Registry's promotion (one ``compare`` at a time). However the holder ends (``kill -9`` included), the
lock goes with it, so a stale lock file never blocks anyone; the holder's pid is written into the
file for messages. ``filelock`` would do the waiting, but not hand the descriptor to ``torchrun``'s
children (the GPU claim must outlive the claiming process's own code), so the few lines are here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def try_lock(path: str | os.PathLike, *, inheritable: bool = False) -> int | None:
    """Take the lock on ``path`` (created if missing) without waiting: its descriptor (closing it releases
    the lock), or None when another process holds it. ``inheritable``: children keep it too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.set_inheritable(fd, inheritable)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def holder(path: str | os.PathLike) -> str:
    """The pid written by the process holding the lock on ``path`` ("?" when unknown)."""
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock on ``path`` for the block, waiting for it when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
