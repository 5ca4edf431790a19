"""A stage ended by SIGTERM or SIGHUP (``dvc queue kill``, a closed terminal) ends its MLflow run as
KILLED instead of leaving it RUNNING, and never inside a store write (:mod:`cxr.tracking` uses both
context managers around its run and its writes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cxr.stage import StageInterrupted

__all__ = ["StageInterrupted", "deferred_signals", "signals_end_the_run"]


# While MLflow writes to its store, an arriving SIGTERM/SIGHUP is held here and raised right after the
# write: raised inside a store transaction (the per-epoch metrics, written just after the resume file)
# it left the sqlite store locked and the run RUNNING. A flag, not a signal mask: the kernel hands a
# process-directed signal to any thread not masking it, and MLflow and torch start threads.
_writing = 0
_held: str | None = None  # the first signal that arrived during the write


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGTERM/SIGHUP (as StageInterrupted) until the store write inside this block is done."""
    global _writing, _held
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1
        if _writing == 0 and _held:
            name, _held = _held, None
            raise StageInterrupted(name)


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """In the main thread, turn SIGTERM/SIGHUP into StageInterrupted so the run is ended, not left RUNNING."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _held
        name = signal.Signals(signum).name
        if _writing:
            _held = _held or name  # raised when the store write ends (deferred_signals)
            return
        raise StageInterrupted(name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
