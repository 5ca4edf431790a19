"""Downloads: an HTTP(S) archive with resumption, a rate floor and an optional sha256; Kaggle via kagglehub.

archive = download(url, Path("data/download"), sha256=cfg.sha256)   # resumes a .part file
folder = kaggle_download("paultimothymooney/chest-xray-pneumonia")
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from cxr.data import SourceError
from cxr.data.archives import archive_problem
from cxr.files import sha256_file
from cxr.stage import progress_bar


def _filename_from_url(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    return name or "dataset.download"


def download_target(url: str, dest_dir: Path, sha256: str | None = None) -> Path:
    """Where ``url`` is kept: ``dest_dir/<key>/<file name>``, the key a hash of the URL (and the
    expected sha256 when given), so a changed ``data.url`` never reuses another URL's file."""
    expected = sha256.lower().strip() if sha256 else ""
    key = hashlib.sha256(f"{url}\n{expected}".encode()).hexdigest()[:16]
    return Path(dest_dir) / key / _filename_from_url(url)


def _read_body(
    resp, f, bar, *, chunk_size: int, timeout: float, min_rate: int, room: int | None = None, clock=time.monotonic
) -> None:
    """Copy the response body to ``f``, abandoning it when fewer than ``min_rate`` bytes/s arrive over any
    ``timeout``-second window, and stopping when more than ``room`` bytes arrive (:class:`_OverCap`). The
    socket timeout alone is per read: a server sending a byte every two seconds would never trip it.
    ``read1`` returns what one socket read gives, so the rate is checked however slowly bytes trickle in."""
    start = last = clock()
    window_start, window_bytes = start, 0
    while True:
        block = resp.raw.read1(chunk_size)
        if not block:
            return
        if room is not None:
            room -= len(block)
            if room < 0:
                raise _OverCap
        f.write(block)
        bar.update(len(block))
        window_bytes += len(block)
        last = clock()
        if min_rate and last - window_start >= timeout:
            rate = window_bytes / (last - window_start)
            if rate < min_rate:
                raise _SlowDownload(
                    f"only {window_bytes} bytes in the last {last - window_start:.0f} s "
                    f"({rate:.0f} B/s < data.min_rate = {min_rate} B/s)"
                )
            window_start, window_bytes = last, 0


class _SlowDownload(OSError):
    pass


class _OverCap(Exception):
    """The body went past the download's cap (a server that streams without end)."""


def _cap_error(url: str, what: str, max_bytes: int) -> SourceError:
    return SourceError(
        f"download of {url} {what}, over data.archive.max_total_bytes = {max_bytes:,} (an archive cannot "
        "hold more than its extraction may write); check data.url, or if the archive is genuine raise the "
        "limit (dvc exp run -S data.archive.max_total_bytes=...)"
    )


def download(
    url: str,
    dest_dir: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    notes: list[str] | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 60.0,
    min_rate: int = 1024,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` into ``dest_dir`` (resuming a ``.part`` file) and return the file.

    Kept under a key of the URL and ``sha256`` (:func:`download_target`), reused when there; only a complete
    file (:func:`_verify`) gets its final name. A server ignoring Range restarts the partial file. Slower
    than ``min_rate`` bytes/s over ``timeout`` seconds: abandoned (it resumes on the next run). Longer than
    ``max_bytes`` (``data.archive.max_total_bytes``), announced or streamed: refused, the partial file deleted.
    """
    notes = [] if notes is None else notes
    if not url or urlparse(url).scheme not in ("http", "https"):
        raise SourceError(f"data.url must be an http(s) link to the dataset archive, found {url!r}")
    final = download_target(url, dest_dir, sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    if final.exists():
        notes.append(f"reusing {final} (downloaded earlier from this URL; delete it to download again)")
        return final
    fetch = functools.partial(
        _fetch,
        url,
        part,
        progress=progress,
        notes=notes,
        read=dict(chunk_size=chunk_size, timeout=timeout, min_rate=min_rate),
        max_bytes=max_bytes,
    )
    try:
        total = fetch()
    except _StartOver:  # the partial file is as long as the remote one (or longer: it changed); start over
        part.unlink()
        total = fetch()
    _verify(url, part, total, sha256.lower().strip() if sha256 else None, notes)
    os.replace(part, final)
    notes.append(f"downloaded {url} -> {final} ({final.stat().st_size} bytes)")
    return final


class _StartOver(Exception):
    """A resumed request was answered 416 (Range not satisfiable)."""


def _fetch(url: str, part: Path, *, progress: bool, notes: list[str], read: dict, max_bytes: int | None):
    """One request for ``url``, appended to ``part`` from its current length (or written anew when the server
    does not resume); the announced total length, or None. ``read``: :func:`_read_body`'s limits."""
    import requests
    import urllib3

    offset = part.stat().st_size if part.exists() else 0
    # identity: the bytes on disk are the file itself, so Content-Length and Range count the same bytes.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        with requests.get(url, stream=True, headers=headers, timeout=read["timeout"]) as resp:
            if offset and resp.status_code == 416:
                raise _StartOver
            if resp.status_code >= 400:
                raise SourceError(
                    f"download of {url} failed: HTTP {resp.status_code} {resp.reason}; "
                    f"check data.url (is the link still valid, does it need a login?)"
                )
            resumed = _resumed(resp, offset, notes)
            offset = offset if resumed else 0
            total = _announced_total(resp, offset, url, max_bytes)
            room = None if max_bytes is None else max_bytes - offset
            name = part.name.removesuffix(".part")
            with open(part, "ab" if resumed else "wb") as f, _bytes_bar(total, offset, name, progress) as bar:
                _read_body(resp, f, bar, room=room, **read)
    except _OverCap:
        part.unlink(missing_ok=True)
        raise _cap_error(
            url, f"stopped after {max_bytes:,} bytes; the partial file was deleted", max_bytes or 0
        ) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(
            f"download of {url} interrupted: {type(exc).__name__}: {exc}; run the stage again to resume "
            f"from {part} ({part.stat().st_size if part.exists() else 0} bytes so far)"
        ) from None
    return total


def _resumed(resp, offset: int, notes: list[str]) -> bool:
    """Whether the server goes on from byte ``offset`` of the partial file (206 and a matching Content-Range)."""
    resumed = (
        offset > 0 and resp.status_code == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
    )
    if offset and not resumed:
        notes.append("server ignored the resume request: downloading from the start")
    elif resumed:
        notes.append(f"resumed download at byte {offset}")
    return resumed


def _announced_total(resp, offset: int, url: str, max_bytes: int | None) -> int | None:
    """The whole file's length the server announces (None without a Content-Length); refused over ``max_bytes``."""
    length = resp.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    if max_bytes is not None and total is not None and total > max_bytes:
        raise _cap_error(url, f"announces {total:,} bytes", max_bytes)
    return total


def _bytes_bar(total: int | None, offset: int, name: str, progress: bool):
    return progress_bar(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        enabled=progress,
        mininterval=1.0,
    )


def _verify(url: str, part: Path, total: int | None, expected: str | None, notes: list[str]) -> None:
    """A downloaded ``part`` is complete: as long as announced, matching ``expected`` (sha256, deleted when it
    does not), or, with neither, a zip or tar whose end markers are present."""
    got = part.stat().st_size
    if total is not None and got != total:
        raise SourceError(f"download of {url} incomplete: {got} of {total} bytes; run the stage again to resume")
    if expected:
        actual = sha256_file(part)
        if actual != expected:
            part.unlink()
            raise SourceError(
                f"sha256 mismatch for {part.name.removesuffix('.part')} from {url}: expected {expected}, got {actual}; "
                f"the file was deleted. Fix data.sha256 if the archive changed upstream, or run "
                f"again to download it anew"
            )
        notes.append("sha256 verified")
    elif total is None and (problem := archive_problem(part)):
        raise SourceError(
            f"download of {url} ended after {got} bytes without a Content-Length, and the file is {problem}: "
            f"the connection probably dropped. Run the stage again to resume from {part}, or set data.sha256 "
            f"so the file can be verified"
        )


KAGGLE_HELP = (
    "Supply Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save "
    "kaggle.json from https://www.kaggle.com/settings (API -> Create New Token) as "
    "~/.kaggle/kaggle.json. Or skip Kaggle: download the archive yourself and set "
    "data.source=path with data.path=<the .zip or folder>, or data.source=url with data.url=<link>"
)


def kaggle_credentials_available() -> bool:
    """True when kagglehub would find credentials (env vars, kaggle.json, access token)."""
    try:
        from kagglehub.config import get_kaggle_credentials
    except ImportError:  # an older kagglehub: look for the usual places ourselves
        folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
        return bool(
            (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
            or os.environ.get("KAGGLE_API_TOKEN")
            or (folder / "kaggle.json").is_file()
        )
    try:
        return get_kaggle_credentials() is not None
    except ValueError as exc:  # a malformed kaggle.json
        raise SourceError(f"Kaggle credentials unusable: {exc}. {KAGGLE_HELP}") from None


def kaggle_download(dataset: str, output_dir: Path | None = None) -> Path:
    """Download (or reuse) a Kaggle dataset with kagglehub and return its folder."""
    try:
        import kagglehub
    except ImportError:
        raise SourceError(
            "data.source=kaggle needs the kagglehub package: pip install kagglehub (or use data.source=path / url)"
        ) from None
    if not kaggle_credentials_available():
        raise SourceError(f"data.source=kaggle but no Kaggle credentials were found. {KAGGLE_HELP}")
    kwargs = {"output_dir": str(output_dir)} if output_dir is not None else {}
    try:
        return Path(kagglehub.dataset_download(dataset, **kwargs))
    except Exception as exc:  # kagglehub raises many types (HTTP, auth, not found)
        raise SourceError(
            f"kagglehub could not download {dataset!r}: {type(exc).__name__}: {exc}. Check "
            f"data.kaggle_dataset and your credentials, or use data.source=path / url"
        ) from None
