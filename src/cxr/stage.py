"""How every stage script under src/ ends, and what its exit code means.

    ERRORS = (ConfigError, CacheError)         # the errors whose messages say what to do
    if __name__ == "__main__":
        run_stage("train", main, ERRORS)

Exit codes: 0 the stage finished; 1 a problem the user can act on, printed as one line
``<stage>: error: <what was found, what was expected, the fix>`` without a traceback (a full
disk too, whichever stage meets it). Anything
else (a traceback) is a bug.

Progress: a stage (and ``cxr predict``) draws tqdm bars only on a terminal. Every bar comes from
:func:`progress_bar`, which is silent when stderr is not a TTY (``dvc repro > log``, CI, a queued
experiment): a log gets the stages' own lines (one per epoch, sweep configuration or stage), never
``\r`` frames.

Start: a stage script imports this module first, in an import block of its own (``# isort: split``), so that
it says which stage starts and what it does (``train@cnn: train one model on ...``, from its docstring) before
torch, sklearn and MLflow take their 10-20 s to import: :func:`announce`, at this module's import.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TextIO


class StageInterrupted(BaseException):
    """SIGTERM or SIGHUP arrived (``dvc queue kill``, a closed terminal): the run ends as KILLED
    (:mod:`cxr.signals` raises it), and the stage exits with 128 + the signal's number."""


def run_stage(name: str, main: Callable[[], int], errors: tuple[type[BaseException], ...]) -> NoReturn:
    """Run a stage's ``main`` and exit with its code; ``errors`` end it with exit code 1 and their message."""
    from cxr import processes

    processes.remember_ancestry()  # for steps a killed dvc no longer wants (cxr.processes.orphaned)
    try:
        code = main()
    except errors as exc:
        sys.exit(f"{name}: error: {exc}")
    except StageInterrupted as exc:  # dvc queue kill, Ctrl-C's SIGTERM cousin, a closed terminal
        print(
            f"{name}: stopped by {exc} (its MLflow run, if any, is marked KILLED; outputs are left as they "
            f"were). Run `dvc repro` again to redo the stage",
            file=sys.stderr,
        )
        signum = {"SIGTERM": 15, "SIGHUP": 1}.get(str(exc), 15)
        sys.exit(128 + signum)  # the shell's convention for a process ended by a signal
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        sys.exit(
            f"{name}: error: no space left on the device{where} ({exc.strerror}). "
            f"Free some space (`df -h` shows where), then run the stage again"
        )
    sys.exit(code)


def progress_enabled(wanted: bool = True, stream: TextIO | None = None) -> bool:
    """Draw a progress bar? Only when ``wanted`` (no ``--no-progress``) and ``stream`` (default: stderr,
    where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(wanted) and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or a manual one: ``total=``, ``.update()``) when :func:`progress_enabled`,
    else the same object disabled: it iterates and updates without writing a byte."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not progress_enabled(enabled), **kwargs)


def starting_line(doc: str | None, script: str | None, env: Mapping[str, str]) -> str | None:
    """``<stage>: <what it does>`` for a stage script of ``src/`` (``doc`` its docstring, ``script`` its path);
    None for any other program, and for torchrun's ranks but the first. The stage is DVC's name for it
    (``DVC_STAGE``: ``train@cnn``), else the docstring's (``Stage train@<model>: ...``)."""
    first = (doc or "").strip().split("\n", 1)[0]
    name, sep, what = first.partition(": ")
    src = Path(__file__).resolve().parents[1]
    if not (script and sep and name.startswith("Stage ") and Path(script).resolve().parent == src):
        return None
    if env.get("RANK", "0") != "0":
        return None
    return f"{env.get('DVC_STAGE') or name.removeprefix('Stage ').strip('`')}: {what}"


def announce() -> None:
    """Print the starting line of the program, if it is a stage script (:func:`starting_line`), at once."""
    main = sys.modules.get("__main__")
    line = starting_line(getattr(main, "__doc__", None), getattr(main, "__file__", None), os.environ)
    if line:
        print(line, flush=True)


announce()  # at import: a stage script imports this module before anything heavy
