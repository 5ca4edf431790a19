"""Which process holds a thing, told apart from a later process that reuses its pid; and whether the
processes that started this stage are still there.

    tags = {"host": HOST, "process": identity()}     # on every MLflow run (cxr.tracking)
    alive(tags["process"])                            # False once that process has ended (kill -9 included)
    remember_ancestry()                               # at a stage's start (cxr.stage.run_stage)
    orphaned()                                        # later: why the stage's parent is gone, or None

``kill -9`` of ``dvc`` leaves the stage it was running alive (DVC runs it through a shell, which is not
killed with it): :func:`orphaned` lets such a stage refuse a step nobody asked for any more (registering
a model). A process that ended without ending its MLflow run (``kill -9`` of the stage) is found by
:func:`alive` at the next run's start, which marks that run KILLED.
"""

from __future__ import annotations

import socket

import psutil

HOST = socket.gethostname()
_ancestry: list[tuple[int, float, str]] = []  # (pid, start time, name) of this process's parents at its start


def identity(pid: int | None = None) -> str:
    """``host/pid/start-time`` of ``pid`` (default: this process)."""
    proc = psutil.Process(pid)
    return f"{HOST}/{proc.pid}/{proc.create_time():.2f}"


def tags() -> dict:
    """``host`` and ``process`` (:func:`identity`), the tags by which a RUNNING MLflow run names its holder."""
    return {"host": HOST, "process": identity()}


def alive(ident: str) -> bool | None:
    """Whether the process :func:`identity` named is still running; None when that cannot be told here
    (another host, or not an identity)."""
    host, _, rest = ident.partition("/")
    pid, _, started = rest.partition("/")
    if host != HOST or not pid.isdigit():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but not ours to inspect
        return True


def remember_ancestry() -> None:
    """Note this process's parents, up to (not including) pid 1, for :func:`orphaned`."""
    _ancestry[:] = [(p.pid, p.create_time(), p.name()) for p in psutil.Process().parents() if p.pid != 1]


def orphaned() -> str | None:
    """Why this process's parents at :func:`remember_ancestry` are no longer all there (``dvc`` killed),
    in words; None when they are, or when the ancestry was never noted."""
    for pid, started, name in _ancestry:
        try:
            if psutil.Process(pid).create_time() == started:
                continue
        except psutil.NoSuchProcess:
            pass
        except psutil.Error:
            continue
        return f"the process that started this stage ({name}, pid {pid}) has ended"
    return None
