"""Reading files from places we do not control: links not followed, only regular files opened.

    for path, problem in walk_files(folder, skip=is_junk):   # problem None: a regular file to use
        ...
    with open_regular(path) as f:                             # never blocks on a FIFO, never follows a link
        digest = sha256_stream(f)

A symbolic link inside a data source may point anywhere (``/etc/shadow``); copying it into
``data/raw`` would put the secret into DVC's cache, from where ``dvc push`` sends it. A FIFO blocks
the first ``read`` forever; devices and sockets are not data. So a source is walked without
following links, and every entry that is not a regular file comes back with a reason instead of
being opened. The entry is reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Optional

LINK = "symbolic_link"
SPECIAL = "not_a_regular_file"
UNREADABLE = "unreadable"


def describe_mode(mode: int) -> str:
    """A file type in words, for messages."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "special file"


def entry_problem(path: str | os.PathLike[str]) -> Optional[tuple[str, str]]:
    """``(reason, detail)`` when ``path`` is not a regular file that may be read, else None (links not followed)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return SPECIAL, f"cannot stat: {type(exc).__name__}: {exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return LINK, f"symbolic link to {target!r}: links are not followed (copy the file itself into the source)"
    return SPECIAL, f"{describe_mode(st.st_mode)}: not a regular file, so it is not read"


def walk_files(
    folder: str | os.PathLike[str], skip: Callable[[str], bool] = lambda name: False
) -> Iterator[tuple[Path, Optional[tuple[str, str]]]]:
    """Every entry under ``folder`` (sorted, links never followed) as ``(path, problem)``.

    ``problem`` is None for a regular file, else ``(reason, detail)``: symbolic links (to files or
    folders), FIFOs, sockets, devices, and folders that cannot be listed (no read or search
    permission: whatever they hold is unknown, so the folder itself is reported). Names for which
    ``skip(name)`` is true are left out (operating-system junk), folders included.
    """
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=unlisted.append):
        while unlisted:
            exc = unlisted.pop(0)
            yield Path(exc.filename), (UNREADABLE, _cannot_list(exc))
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if skip(d):
                continue
            if os.path.islink(here / d):  # os.walk lists a linked folder as a folder, and does not enter it
                yield here / d, entry_problem(here / d)
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if not skip(name):
                yield here / name, entry_problem(here / name)
    for exc in unlisted:
        yield Path(exc.filename), (UNREADABLE, _cannot_list(exc))


def _cannot_list(exc: OSError) -> str:
    return (
        f"folder cannot be listed ({type(exc).__name__}: {exc.strerror}): whatever it holds was not read. "
        f"Give this user read and search permission on it (chmod u+rx), or move its images out"
    )


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file: no link followed, no FIFO waited on.

    ``O_NOFOLLOW`` refuses a final symbolic link, ``O_NONBLOCK`` keeps a FIFO from blocking the
    open, and the type is checked on the opened descriptor (no race with a swapped file).
    Raises OSError with a readable message otherwise.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise OSError(exc.errno, f"{path} is a symbolic link; links are not followed") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is a {describe_mode(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_stream(f: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, bytes read) of an open binary file, read in chunks (memory stays flat)."""
    h = hashlib.sha256()
    n = 0
    while block := f.read(chunk):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def utf8_name(rel: Path) -> tuple[Path, bool]:
    """``rel`` with parts that are not valid UTF-8 (surrogate-escaped bytes) decoded as latin-1, and
    whether it changed: such names cannot be written to the manifest CSV."""
    parts, changed = [], False
    for part in rel.parts:
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            part = part.encode("utf-8", "surrogateescape").decode("latin-1")
            changed = True
        parts.append(part)
    return Path(*parts), changed
