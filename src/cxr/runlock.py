"""One trainer per resume state: an exclusive lock beside ``data/resume/<model>.pt``.

    with resume_lock(Path("data/resume/cnn.pt"), "cnn"):
        fit(..., resume_path="data/resume/cnn.pt")

``kill -9`` of ``dvc`` leaves its trainer running (DVC runs it through a shell, which is not
killed with it). Without a lock a rerun starts a second trainer that resumes from the file the
orphan is still writing, and both write the same outputs. The lock (:mod:`cxr.locks`) is on
``<resume>.lock``: the kernel drops it when its holder exits, however it exits, so a stale lock
file never blocks anyone. The holder's pid is written into the file for the message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cxr.locks import holder, try_lock


class ResumeLockedError(RuntimeError):
    """Another process holds the resume state of this model."""


def lock_path(resume_path: str | os.PathLike) -> Path:
    p = Path(resume_path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def resume_lock(resume_path: str | os.PathLike, what: str = "this model") -> Iterator[Path]:
    """Hold the exclusive lock on ``resume_path`` for the block; refuse at once when another process holds it."""
    path = lock_path(resume_path)
    fd = try_lock(path)
    if fd is None:
        pid = holder(path)
        raise ResumeLockedError(
            f"another trainer (pid {pid}) is training {what} with the resume state {resume_path} "
            f"(lock {path}). Two trainers would resume from, and overwrite, the same files. Wait for it "
            f"to finish, or stop it (kill {pid}) and run again: the run resumes from its last epoch"
        )
    try:
        yield path
    finally:
        os.close(fd)  # releases the lock
