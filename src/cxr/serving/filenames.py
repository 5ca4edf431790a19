r"""File names as ``cxr predict`` writes them: text every output encoder accepts, the raw bytes recoverable.

    escape_name("bad\udcff.jpeg")  # 'bad\\xff.jpeg', printed bad\xff.jpeg (the name held the byte 0xff)
    raw_name("bad\\xff.jpeg")      # b'bad\xff.jpeg': open(raw_name(cell), "rb") opens the file again

A POSIX file name is bytes; Python hands one that is not UTF-8 over with surrogate-escaped characters,
which no UTF-8 writer (stdout, pandas' Arrow strings, a CSV file) accepts. The rule, one for every
format: a byte that is not part of valid UTF-8 is written ``\xNN`` and a backslash ``\\``;
everything else is the name as it is.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def _raw(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # a name from the file system: its bytes
    except UnicodeEncodeError:  # a surrogate no file system produces: keep it visible
        return text.encode("utf-8", "backslashreplace")


def escape_name(name: str) -> str:
    r"""``name`` (a path as Python gives it) as text: undecodable bytes ``\xNN``, a backslash ``\\``."""
    return _raw(name).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def raw_name(text: str) -> bytes:
    """The bytes of the file name that :func:`escape_name` wrote as ``text``."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        out += b"\\" if m.group(1) == "\\" else bytes([int(m.group(1)[1:], 16)])
        pos = m.end()
    return bytes(out + text[pos:].encode("utf-8"))


def printable(text: str | None) -> str | None:
    r"""A message that may quote such a name, with its undecodable bytes written ``\xNN`` (not reversible)."""
    return None if text is None else _raw(text).decode("utf-8", "backslashreplace")
