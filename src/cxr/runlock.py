"""One trainer per resume state: an exclusive lock beside ``data/resume/<model>.pt``.

    with resume_lock(Path("data/resume/cnn.pt"), "cnn"):
        fit(..., resume_path="data/resume/cnn.pt")

``kill -9`` of ``dvc`` leaves its trainer running (DVC runs it through a shell, which is not
killed with it). Without a lock a rerun starts a second trainer that resumes from the file the
orphan is still writing, and both write the same outputs. The lock is ``flock`` on
``<resume>.lock``: the kernel drops it when its holder exits, however it exits, so a stale lock
file never blocks anyone. The holder's pid is written into the file for the message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is a no-op there
    fcntl = None


class ResumeLockedError(RuntimeError):
    """Another process holds the resume state of this model."""


def lock_path(resume_path: str | os.PathLike) -> Path:
    p = Path(resume_path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def resume_lock(resume_path: str | os.PathLike, what: str = "this model") -> Iterator[Path]:
    """Hold the exclusive lock on ``resume_path`` for the block; refuse at once when another process holds it."""
    path = lock_path(resume_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                raise ResumeLockedError(
                    f"another trainer (pid {holder}) is training {what} with the resume state {resume_path} "
                    f"(lock {path}). Two trainers would resume from, and overwrite, the same files. Wait for it "
                    f"to finish, or stop it (kill {holder}) and run again: the run resumes from its last epoch"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock
