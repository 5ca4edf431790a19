"""Safe extraction of .zip and tar archives (any compression), told apart by content, not name.

    extract_archive(archive, dest, limits=cfg.archive)   # SourceError naming the member on anything unsafe

Refused: absolute paths and ``..`` (zip-slip), symbolic and hard links, device files and FIFOs,
encrypted zip members, damaged or cut archives, and more bytes than ``data.archive`` allows
(a decompression bomb, refused before the disk fills).
"""

from __future__ import annotations

import errno
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cxr.data import SourceError, is_junk
from cxr.data.config import ArchiveLimits
from cxr.data.limits import ArchiveBudget, ArchiveLimitError
from cxr.data.safefs import utf8_name
from cxr.stage import progress_bar


def _unsafe_name(name: str) -> str | None:
    """Why an archive member name is unsafe to extract, or None when it is fine."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "path climbs out of the target folder ('..')"
    return None


def _refuse(archive: Path, member: str, reason: str) -> SourceError:
    return SourceError(
        f"unsafe member {member!r} in archive {archive}: {reason}; refusing to extract it. "
        f"The archive is damaged or not the dataset: download it again from a trusted source"
    )


class _EndAwareTarInfo(tarfile.TarInfo):
    """Records on the TarFile whether iteration ended at the end-of-archive (zero) block, or just ran
    out of data: tarfile treats both the same, so a tar cut at a member boundary reads as complete."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # public at runtime, not in typeshed
            if isinstance(tf, _EndAwareTarFile):
                tf.end_marker = True
            raise


class _EndAwareTarFile(tarfile.TarFile):
    end_marker = False  # set by _EndAwareTarInfo when iteration meets the end-of-archive block


NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS, Windows)


def _member_name(name: str) -> str:
    """A member's path with ``\\`` as a separator, as Windows tools write it, in zips and tars alike."""
    return name.replace("\\", "/")


def _long_part(name: str) -> str | None:
    return next((p for p in name.split("/") if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)


def _unwritable(archive: Path, member: str, exc: OSError) -> SourceError:
    """A member the filesystem refuses: a file and a folder of one name, a name too long, ..."""
    if exc.errno == errno.ENAMETOOLONG:
        part = _long_part(member) or member
        n = len(part.encode("utf-8", "surrogateescape"))
        why = f"a name in it is {n} bytes long; the filesystem allows {NAME_MAX}"
        fix = "rename it in the archive (or extract the archive yourself and point data.path at the folder)"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        why = "the archive holds a file and a folder of the same name on its path"
        fix = "the archive is not a dataset copy as published: rename one of them, or download it again"
    else:
        why = f"{type(exc).__name__}: {exc.strerror}"
        fix = "check the disk space and permissions of the output folder"
    return SourceError(f"cannot extract member {member!r} of archive {archive}: {why}. Fix: {fix}")


def _duplicate(first_size: int, size: int) -> str:
    return (
        f"a second archive member of this name ({size:,} bytes; the first, kept, has {first_size:,}): "
        f"not extracted. Rename one of them in the archive if both are wanted"
    )


def _damaged(archive: Path, what: str) -> SourceError:
    return SourceError(
        f"cannot read archive {archive}: {what}; it is probably truncated or corrupt: download it again "
        f"(or delete it so the url source fetches it anew)"
    )


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    progress: bool = False,
    limits: ArchiveLimits | None = None,
    notes: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Extract a .zip or tar (any compression) into ``dest``, refusing unsafe members.

    Returns the members not extracted because an earlier member had the same name (``\\`` read as
    ``/`` in both formats, as Windows tools write it): ``(name, detail)``, the first one kept.

    Refused: absolute paths and ``..`` (zip-slip), symbolic and hard links, device files and
    fifos, encrypted zip members; and, as a decompression bomb, an archive that would write more
    than ``limits`` allow (total bytes, bytes per member, total / archive size). A damaged member
    (bad CRC), a tar without its end-of-archive blocks (cut at a member boundary) and a truncated
    compressed stream stop with a message. Tar member names that are not UTF-8 are decoded as
    latin-1. The format is told from the content, not the name (download URLs often have none).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = ArchiveBudget(archive, limits or ArchiveLimits())
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, dest, root, budget, progress)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, dest, budget, progress, notes)
    except ArchiveLimitError as exc:
        raise SourceError(str(exc)) from None
    raise SourceError(
        f"{archive} is neither a folder nor a zip or tar archive; expected the dataset as a "
        f"folder, .zip, .tar.gz, .tgz or .tar (a downloaded file that is an HTML error page: "
        f"delete it and check data.url)"
    )


def _extract_zip(archive: Path, dest: Path, root: Path, budget: ArchiveBudget, progress: bool) -> list[tuple[str, str]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _damaged(archive, f"{type(exc).__name__}: {exc}") from None
    with zf:
        infos = zf.infolist()
        # Declared sizes first: a bomb is refused before a byte is written.
        for info in infos:
            budget.admit(info.filename, info.file_size)
        budget.admit_total(sum(info.file_size for info in infos))
        seen: dict[str, int] = {}
        duplicates = []
        for info in progress_bar(infos, desc="extracting", unit="file", enabled=progress, mininterval=1.0):
            reason = _unsafe_name(info.filename)
            mode = info.external_attr >> 16
            if reason is None and stat.S_ISLNK(mode):
                reason = "symbolic link"
            elif reason is None and mode and (stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)):
                reason = "device file, fifo or socket"
            if reason:
                raise _refuse(archive, info.filename, reason)
            name = _member_name(info.filename)
            target = (dest / name).resolve()
            if target != root and root not in target.parents:
                raise _refuse(archive, info.filename, "resolves outside the target folder")
            if any(is_junk(part) for part in PurePosixPath(name).parts):
                continue
            if info.is_dir():
                _mkdir(target, archive, info.filename)
                continue
            if name in seen:
                duplicates.append((name, _duplicate(seen[name], info.file_size)))
                continue
            seen[name] = info.file_size
            if info.flag_bits & 0x1:
                raise SourceError(
                    f"member {info.filename!r} of {archive} is encrypted (password-protected); extract the "
                    f"archive yourself with its password and point data.path at the folder"
                )
            _mkdir(target.parent, archive, info.filename)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    written = 0
                    while block := src.read(1 << 20):
                        written += len(block)
                        budget.count(info.filename, len(block), written)
                        dst.write(block)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                # BadZipFile: bad CRC or a damaged header; NotImplementedError: a compression
                # method Python lacks (e.g. deflate64); RuntimeError: other encryption schemes.
                raise _damaged(archive, f"member {info.filename!r}: {type(exc).__name__}: {exc}") from None
            except OSError as exc:
                raise _unwritable(archive, info.filename, exc) from None
    return duplicates


def _mkdir(folder: Path, archive: Path, member: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(archive, member, exc) from None


def _extract_tar(
    archive: Path, dest: Path, budget: ArchiveBudget, progress: bool, notes: list[str] | None
) -> list[tuple[str, str]]:
    renamed = 0
    seen: dict[str, int] = {}
    duplicates = []
    try:
        # Streaming mode: one pass over a compressed archive, members checked as they come.
        with _EndAwareTarFile.open(archive, "r|*", tarinfo=_EndAwareTarInfo, errors="surrogateescape") as tf:
            for member in progress_bar(tf, desc="extracting", unit="file", enabled=progress, mininterval=1.0):
                fixed, changed = utf8_name(Path(member.name))
                renamed += changed
                member.name = _member_name(fixed.as_posix() if changed else member.name)
                reason = _unsafe_name(member.name)
                if reason is None and member.issym():
                    reason = f"symbolic link to {member.linkname!r}"
                elif reason is None and member.islnk():
                    reason = f"hard link to {member.linkname!r}"
                elif reason is None and not (member.isfile() or member.isdir()):
                    reason = "device file, fifo or other special file"
                if reason:
                    raise _refuse(archive, member.name, reason)
                if any(is_junk(part) for part in PurePosixPath(member.name).parts):
                    continue
                if member.isfile():
                    if member.name in seen:
                        duplicates.append((member.name, _duplicate(seen[member.name], member.size)))
                        continue
                    seen[member.name] = member.size
                    budget.admit(member.name, member.size)
                    budget.count(member.name, member.size, member.size)
                try:  # the 'data' filter is a second line of defence (and drops odd permission bits)
                    tf.extract(member, dest, filter="data")
                except OSError as exc:
                    if exc.errno is None:  # gzip.BadGzipFile and the like: the stream, not the disk
                        raise
                    raise _unwritable(archive, member.name, exc) from None
            complete = tf.end_marker
    except tarfile.FilterError as exc:
        raise _refuse(archive, exc.tarinfo.name, str(exc)) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _damaged(archive, f"{type(exc).__name__}: {exc}") from None
    if not complete:
        raise _damaged(
            archive,
            f"the tar ends after {budget.total:,} bytes of members without its end-of-archive "
            f"blocks, so members are missing (the file was cut short)",
        )
    if renamed and notes is not None:
        notes.append(f"{renamed} archive member name(s) were not valid UTF-8: decoded as latin-1")
    return duplicates


def archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete zip or tar archive (None: it is). Used where the server sent
    no Content-Length, so only the archive's own end markers tell a complete file from a cut one."""
    if zipfile.is_zipfile(path):  # the end-of-central-directory record sits at the very end
        return None
    try:
        with _EndAwareTarFile.open(path, "r:*", tarinfo=_EndAwareTarInfo) as tf:
            for _ in tf:
                pass
            if not tf.end_marker:
                return "a tar without its end-of-archive blocks"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return f"not a complete zip or tar archive ({type(exc).__name__}: {exc})"
    return None
