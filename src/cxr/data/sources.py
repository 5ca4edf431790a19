"""Dataset intake: any source -> one canonical tree ``{train,val,test}/{NORMAL,PNEUMONIA}/``.

The ``fetch`` stage (``python src/fetch.py --params params.yaml --out data/raw``) calls::

    report = fetch(cfg, Path("data/raw"))   # cfg: DataConfig, the `data:` section of params.yaml

``data.source`` picks where the images come from:

- ``synthetic``: the seeded generator of :mod:`cxr.data.synthetic` (offline default).
- ``path``: a local folder or a .zip / .tar.gz / .tgz / .tar archive in the Kaggle
  (``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``) or Mendeley
  (``ChestXRay2017/chest_xray/{train,test}/...``) layout, or a flat ``{NORMAL,PNEUMONIA}/`` folder
  (taken as train only). The quirks of real copies are handled: a nested duplicate
  ``chest_xray/chest_xray/``, ``__MACOSX/``, ``.DS_Store``, ``._*`` AppleDouble files, folder names
  in any letter case, a missing ``val/`` or ``test/``.
- ``url``: an HTTP(S) archive, downloaded with resumption and an optional sha256 check.
- ``kaggle``: ``kagglehub.dataset_download`` (needs Kaggle credentials).

Every file inside a class folder is taken, broken images included: the ``split`` stage decides
what is usable and reports what it quarantines. Only operating-system junk is dropped here.
Symbolic links are never followed and FIFOs, sockets and devices never opened; they, and files
lying in a split folder outside its class folders, are listed in ``<out>/skipped.csv``, which split
adds to its quarantine report. Two folders meaning one thing (``train/NORMAL`` and
``train/normal``, ``val/`` and ``validation/``) stop the import with both names. Archives are
extracted safely: a member that would land outside the target, a link, a device file, an
encrypted or damaged member, a cut tar, or more bytes than ``data.archive`` allows (a
decompression bomb) stops the extraction with an error naming it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from cxr import CLASSES, SPLITS
from cxr.config import ArchiveLimits, DataConfig
from cxr.data import is_junk
from cxr.data.limits import ArchiveBudget, ArchiveLimitError
from cxr.data.safefs import walk_files
from cxr.files import sha256_file

# Folder names seen in real copies, lower-cased; "validation"/"valid" from re-packaged copies.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

EXPECTED_LAYOUT = (
    "expected a folder holding train/ (any letter case) with NORMAL/ and PNEUMONIA/ subfolders, "
    "plus optional val/ and test/ alike (the Kaggle or Mendeley layout, e.g. "
    "chest_xray/train/NORMAL/IM-0115-0001.jpeg), or a flat folder with NORMAL/ and PNEUMONIA/ "
    "(used as train only)"
)


class SourceError(RuntimeError):
    """The data source cannot be used as configured; the message says what to change."""


@dataclass
class FetchReport:
    source: str  # synthetic | path | url | kaggle
    out_dir: Path
    counts: dict[str, dict[str, int]]  # split -> class -> images written
    notes: list[str] = field(default_factory=list)  # what was found and decided, for the log

    @property
    def total(self) -> int:
        return sum(n for per_class in self.counts.values() for n in per_class.values())

    def table(self) -> str:
        """The counts as a small aligned text table (split rows, class columns, totals)."""
        head = f"{'split':<7}" + "".join(f"{c:>11}" for c in CLASSES) + f"{'total':>9}"
        rows = [head]
        for split in SPLITS:
            per = self.counts.get(split, {})
            rows.append(f"{split:<7}" + "".join(f"{per.get(c, 0):>11}" for c in CLASSES) + f"{sum(per.values()):>9}")
        rows.append(
            f"{'total':<7}"
            + "".join(f"{sum(self.counts.get(s, {}).get(c, 0) for s in SPLITS):>11}" for c in CLASSES)
            + f"{self.total:>9}"
        )
        return "\n".join(rows)


def fetch(cfg: DataConfig, out_dir: Path, *, base_dir: Path = Path("."), progress: bool = True) -> FetchReport:
    """Bring the configured source into ``out_dir`` (replaced wholesale) and count what arrived.

    Relative paths (``data.path``, ``data.download_dir``) resolve against ``base_dir``, the
    repository root when DVC runs the stage.
    """
    out_dir = Path(out_dir)
    base_dir = Path(base_dir)
    notes: list[str] = []

    if cfg.source == "synthetic":
        from cxr.data.synthetic import generate

        _reset(out_dir)
        counts = generate(out_dir, cfg.synthetic)
        notes.append(f"synthetic images, seed {cfg.synthetic.seed}")
        return FetchReport("synthetic", out_dir, counts, notes)

    if cfg.source == "path":
        src = resolve_path(cfg.path, base_dir)
        _check_not_inside(src, out_dir)
        notes.append(f"source: {src}")
        counts = _import_any(src, out_dir, notes, link=cfg.link, progress=progress, limits=cfg.archive)
        return FetchReport("path", out_dir, counts, notes)

    if cfg.source == "url":
        download_dir = _anchor(cfg.download_dir, base_dir)
        archive = download(
            cfg.url,
            download_dir,
            sha256=cfg.sha256,
            progress=progress,
            notes=notes,
            timeout=cfg.timeout,
            min_rate=cfg.min_rate,
        )
        counts = _import_any(archive, out_dir, notes, link=False, progress=progress, limits=cfg.archive)
        return FetchReport("url", out_dir, counts, notes)

    if cfg.source == "kaggle":
        folder = kaggle_download(cfg.kaggle_dataset, _anchor(cfg.download_dir, base_dir) / "kaggle")
        notes.append(f"kagglehub: {cfg.kaggle_dataset} -> {folder}")
        counts = _import_any(folder, out_dir, notes, link=cfg.link, progress=progress, limits=cfg.archive)
        return FetchReport("kaggle", out_dir, counts, notes)

    raise SourceError(f"data.source: unknown source {cfg.source!r}; expected synthetic, path, url or kaggle")


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def resolve_path(path: str | os.PathLike | None, base_dir: Path) -> Path:
    """``path`` as given if absolute, else under ``base_dir``, else under ``$DVC_ROOT``.

    Queued DVC experiments run in a temporary copy of the repository that lacks untracked data;
    ``DVC_ROOT`` points at the real repository, where a relative ``data.path`` still exists.
    """
    if not path:
        raise SourceError("data.path is empty; set it to a folder or a .zip/.tar.gz archive of the dataset")
    p = Path(path).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise SourceError(f"data.path {p} does not exist; check the path (a folder or .zip/.tar.gz)")
        return p
    tried = [Path(base_dir) / p]
    if os.environ.get("DVC_ROOT"):
        tried.append(Path(os.environ["DVC_ROOT"]) / p)
    for candidate in tried:
        if candidate.exists():
            return candidate.resolve()
    raise SourceError(
        f"data.path {str(path)!r} not found (tried {', '.join(str(t) for t in tried)}); "
        f"give a path relative to the repository root or an absolute one"
    )


def _anchor(path: str, base_dir: Path) -> Path:
    """Where downloads are kept: in the real repository even for a queued experiment, so a
    partial download started by one experiment resumes in the next."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    root = os.environ.get("DVC_ROOT")
    return (Path(root) if root else Path(base_dir)) / p


def _check_not_inside(src: Path, out_dir: Path) -> None:
    src_r, out_r = src.resolve(), out_dir.resolve()
    if src_r == out_r or out_r in src_r.parents:
        raise SourceError(
            f"data.path {src} lies inside the output folder {out_dir}, which the fetch stage "
            f"replaces on every run; move the dataset elsewhere (e.g. data/source/)"
        )


def _reset(out_dir: Path) -> None:
    if out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    for split in SPLITS:
        for label in CLASSES:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# Layout detection and import
# --------------------------------------------------------------------------------------------


def _subdirs(folder: Path) -> dict[str, Path]:
    """Child folders by lower-cased name (junk skipped); first in sorted order wins on clashes."""
    out: dict[str, Path] = {}
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return out
    for child in children:
        # A linked folder is not entered (links never lead out of a source); the import reports it.
        if child.is_dir() and not child.is_symlink() and not is_junk(child.name):
            if child.name.lower() in out and _SPLIT_ALIASES.get(child.name.lower()):
                _refuse_clash([out[child.name.lower()], child], f"the {_SPLIT_ALIASES[child.name.lower()]} split")
            out.setdefault(child.name.lower(), child)
    return out


def _refuse_clash(folders: list[Path], what: str) -> None:
    """Two folders that both mean one thing (train/NORMAL and train/normal; val/ and validation/):
    taking one would silently lose the other's images, so stop and name both."""
    if len(folders) > 1:
        names = " and ".join(f"{f}/" for f in folders)
        raise SourceError(
            f"found {names} side by side: both are {what}, and importing one would lose the other's images. "
            f"Merge them into one folder (or remove the one you do not want), then run fetch again"
        )


def class_dirs(folder: Path) -> dict[str, Path]:
    """The class folders ``folder`` holds, any letter case: ``{NORMAL: dir, PNEUMONIA: dir}``."""
    sub = _subdirs(folder)
    found = {label: sub[label.lower()] for label in CLASSES if label.lower() in sub}
    if found:
        try:
            children = [c for c in folder.iterdir() if c.is_dir() and not is_junk(c.name)]
        except OSError:
            children = []
        for label in found:
            _refuse_clash(
                sorted(c for c in children if c.name.lower() == label.lower()), f"the {label} class of {folder.name}/"
            )
    return found


@dataclass
class Layout:
    root: Path  # the folder holding train/ (or the flat class folders)
    dirs: dict[str, dict[str, Path]]  # split -> class -> folder (splits absent from the copy omitted)
    flat: bool = False
    others: list[Path] = field(default_factory=list)  # further copies of the layout, not taken


def find_layout(root: Path) -> Layout:
    """The dataset folder under ``root``: the one holding train/ with both class folders.

    Where the copy holds the tree twice (Kaggle's nested ``chest_xray/chest_xray/``), the copy
    with more files wins, the shallower one on a tie, so images are never taken twice.
    """
    root = Path(root)
    candidates: list[Layout] = []
    flats: list[Layout] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        here = Path(dirpath)
        sub = _subdirs(here)
        splits: dict[str, dict[str, Path]] = {}
        holders: dict[str, list[Path]] = {}
        for name, folder in sub.items():
            split = _SPLIT_ALIASES.get(name)
            if split and (classes := class_dirs(folder)):
                holders.setdefault(split, []).append(folder)
                splits.setdefault(split, classes)
        for split, folders in holders.items():
            _refuse_clash(folders, f"the {split} split")
        # train/ must hold both classes (that also rules out the Mendeley OCT tree next door,
        # whose train/ has NORMAL but no PNEUMONIA); val/ and test/ may hold one class only.
        if len(splits.get("train", {})) == len(CLASSES):
            candidates.append(Layout(here, splits))
        elif here.name.lower() not in _SPLIT_ALIASES and len(classes := class_dirs(here)) == len(CLASSES):
            flats.append(Layout(here, {"train": classes}, flat=True))
    pool = candidates or flats
    if not pool:
        raise SourceError(
            f"no chest X-ray dataset layout found under {root}; found: {_describe(root)}; "
            f"{EXPECTED_LAYOUT}. Point data.path at the folder (or archive) that holds it"
        )

    def size(layout: Layout) -> int:
        return sum(_count_files(d) for per in layout.dirs.values() for d in per.values())

    sizes = [size(layout) for layout in pool]
    best = max(range(len(pool)), key=lambda i: (sizes[i], -len(pool[i].root.parts)))
    chosen = pool[best]
    chosen.others = [layout.root for i, layout in enumerate(pool) if i != best]
    return chosen


def find_class_layout(root: Path) -> Layout:
    """The one folder under ``root`` (at any depth, ``root`` included) holding NORMAL/ and PNEUMONIA/: an
    external set, whose images all go to ``test``. Several such folders are refused: which is the set?"""
    root = Path(root)
    found: list[Layout] = []
    for dirpath, dirnames, _ in os.walk(root):  # links are not followed
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        here = Path(dirpath)
        if len(classes := class_dirs(here)) == len(CLASSES):
            found.append(Layout(here, {"test": classes}))
            dirnames[:] = [d for d in dirnames if d.lower() not in {c.lower() for c in CLASSES}]
    if not found:
        raise SourceError(
            f"no NORMAL/ and PNEUMONIA/ folders found under {root}; found: {_describe(root)}. An external set "
            "is a folder (or .zip/.tar.gz) holding both class folders, at any depth"
        )
    if len(found) > 1:
        where = ", ".join((f.root.relative_to(root).as_posix() or ".") + "/" for f in found)
        raise SourceError(
            f"{root} holds NORMAL/ and PNEUMONIA/ in {len(found)} places ({where}): an external set is one of "
            "them. Point it at that folder (one named set per folder)"
        )
    return found[0]


def _describe(root: Path, limit: int = 12) -> str:
    """A short listing of what is under ``root`` (two levels), for error messages."""
    items: list[str] = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if is_junk(child.name):
                continue
            if child.is_symlink():
                items.append(f"{child.name} (a symbolic link: not followed; point data.path at its target instead)")
            elif child.is_dir():
                inner = sorted(c.name for c in child.iterdir() if not is_junk(c.name))
                shown = ", ".join(inner[:6]) + (", ..." if len(inner) > 6 else "")
                items.append(f"{child.name}/ [{shown}]")
            else:
                items.append(child.name)
    if not items:
        return "nothing (an empty folder)"
    return "; ".join(items[:limit]) + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")


def _iter_files(folder: Path):
    """Regular files under ``folder`` (links and special files left out: :func:`import_tree` reports them)."""
    for path, problem in walk_files(folder, skip=is_junk):
        if problem is None:
            yield path


def _utf8_name(rel: Path) -> tuple[Path, bool]:
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


def _count_files(folder: Path) -> int:
    return sum(1 for _ in _iter_files(folder))


def import_tree(
    layout: Layout,
    out_dir: Path,
    *,
    mode: str = "link",
    progress: bool = False,
    skipped: list[dict] | None = None,
    notes: list[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Place every file of ``layout``'s class folders under ``out_dir/<split>/<CLASS>/``.

    ``mode``: ``link`` hardlinks (copying when the filesystems differ or linking is refused),
    ``copy`` copies, ``move`` renames (for freshly extracted archives). Sub-folders inside a class
    folder are kept, so equal file names in them cannot collide. Symbolic links are never followed
    and FIFOs, sockets and devices never opened: each is appended to ``skipped`` (path as it would
    have been in ``out_dir``, reason, detail) and written to ``out_dir/skipped.csv``, which the
    split stage adds to its quarantine report.
    """
    from tqdm import tqdm

    if mode not in ("link", "copy", "move"):
        raise ValueError(f"mode must be link, copy or move, found {mode!r}")
    _reset(out_dir)
    skipped = [] if skipped is None else skipped
    jobs = []
    renamed = 0
    for split, per in layout.dirs.items():
        for label, folder in per.items():
            for f, problem in walk_files(folder, skip=is_junk):
                rel, changed = _utf8_name(f.relative_to(folder))
                renamed += changed
                if problem is None:
                    jobs.append((split, label, f, rel))
                else:
                    skipped.append(
                        {"path": f"{split}/{label}/{rel.as_posix()}", "reason": problem[0], "detail": problem[1]}
                    )
    for split, per in layout.dirs.items():
        if layout.flat:
            break
        parent = next(iter(per.values())).parent  # the split folder: files here carry no label
        for f in sorted(parent.iterdir()):
            if not is_junk(f.name) and not f.is_dir():
                skipped.append(
                    {
                        "path": f"{split}/{_utf8_name(Path(f.name))[0].as_posix()}",
                        "reason": "outside_class_folder",
                        "detail": f"lies in {split}/ but not in NORMAL/ or PNEUMONIA/, so it has no label: "
                        f"move it into its class folder",
                    }
                )
    if renamed and notes is not None:
        notes.append(f"{renamed} file name(s) were not valid UTF-8: decoded as latin-1")
    if skipped:
        write_skipped(out_dir, skipped)
        if notes is not None:
            n = len(skipped)
            notes.append(
                f"{n} entr{'y' if n == 1 else 'ies'} not imported (links, special files, "
                f"files outside the class folders), listed in "
                f"{out_dir / SKIPPED_REPORT} and in the split stage's quarantine report"
            )
    counts = {split: {label: 0 for label in CLASSES} for split in SPLITS}
    can_link = mode == "link"
    for split, label, src, rel in tqdm(jobs, desc="importing", unit="img", disable=not progress, mininterval=1.0):
        dst = out_dir / split / label / rel
        if len(rel.parts) > 1:
            dst.parent.mkdir(parents=True, exist_ok=True)
        if mode == "move":
            os.replace(src, dst)
        elif can_link:
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError as exc:
                # Another filesystem, or hardlinks refused (protected_hardlinks, FAT, some
                # network mounts): copy this and every later file.
                if exc.errno not in (
                    errno.EXDEV,
                    errno.EPERM,
                    errno.EACCES,
                    errno.EMLINK,
                    errno.ENOTSUP,
                    errno.EOPNOTSUPP,
                ):
                    raise
                can_link = False
                shutil.copyfile(src, dst)
        else:
            shutil.copyfile(src, dst)
        counts[split][label] += 1
    return counts


SKIPPED_REPORT = "skipped.csv"  # in the raw tree's root: what fetch did not import, and why
SKIPPED_COLUMNS = ("path", "reason", "detail")


def write_skipped(out_dir: Path, rows: list[dict]) -> Path:
    import csv

    path = Path(out_dir) / SKIPPED_REPORT
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SKIPPED_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["path"]))
    return path


def import_external(
    src: Path, out_dir: Path, notes: list[str], *, link: bool, progress: bool, limits: ArchiveLimits | None = None
) -> dict[str, dict[str, int]]:
    """An external set (a folder or archive with NORMAL/ and PNEUMONIA/) -> ``out_dir/test/<CLASS>/``, with
    fetch's guarantees: no link followed, no special file opened, archive limits enforced."""
    return _import_any(src, out_dir, notes, link=link, progress=progress, limits=limits, find=find_class_layout)


def _import_any(
    src: Path,
    out_dir: Path,
    notes: list[str],
    *,
    link: bool,
    progress: bool,
    limits: ArchiveLimits | None = None,
    find=find_layout,
) -> dict[str, dict[str, int]]:
    """A folder or an archive -> the canonical tree (``find``: the layout to look for)."""
    # Clear the output before looking for the layout: when out_dir lies inside the source
    # folder (data.path: data, out: data/raw), last run's canonical tree must not be mistaken
    # for the dataset.
    _reset(out_dir)
    if src.is_dir():
        layout = find(src)
        _note_layout(layout, src, notes)
        return import_tree(layout, out_dir, mode="link" if link else "copy", progress=progress, notes=notes)
    if not src.is_file():
        raise SourceError(f"{src} is neither a folder nor a file; expected a dataset folder or archive")
    # Extract next to out_dir: the same filesystem, so the images are moved, not copied twice.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-extract-", dir=out_dir.parent))
    try:
        extract_archive(src, staging, progress=progress, limits=limits, notes=notes)
        layout = find(staging)
        _note_layout(layout, staging, notes)
        return import_tree(layout, out_dir, mode="move", progress=progress, notes=notes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _note_layout(layout: Layout, root: Path, notes: list[str]) -> None:
    where = layout.root.relative_to(root).as_posix() if layout.root != root else "."
    if layout.flat:
        notes.append(f"flat NORMAL/PNEUMONIA folders at {where}: all images go to train/")
    elif "train" not in layout.dirs:
        notes.append(f"class folders at {where}: every image is external test data")
    else:
        notes.append(f"dataset folder: {where}")
        if layout.others:
            skipped = ", ".join(o.relative_to(root).as_posix() for o in layout.others)
            notes.append(f"also found {skipped}: not taken (duplicate copies; the largest one wins)")
        missing = [s for s in SPLITS if s not in layout.dirs]
        if missing:
            notes.append(f"no {'/'.join(missing)} folder in the source: left empty")


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


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
        except tarfile.EOFHeaderError:
            tf.cxr_end_marker = True
            raise


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
) -> None:
    """Extract a .zip or tar (any compression) into ``dest``, refusing unsafe members.

    Refused: absolute paths and ``..`` (zip-slip), symbolic and hard links, device files and
    fifos, encrypted zip members; and, as a decompression bomb, an archive that would write more
    than ``limits`` allow (total bytes, bytes per member, total / archive size). A damaged member
    (bad CRC), a tar without its end-of-archive blocks (cut at a member boundary) and a truncated
    compressed stream stop with a message. Tar member names that are not UTF-8 are decoded as
    latin-1. The format is told from the content, not the name (download URLs often have none).
    """
    from tqdm import tqdm

    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = ArchiveBudget(archive, limits or ArchiveLimits())
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, root, budget, progress, tqdm)
            return
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, budget, progress, tqdm, notes)
            return
    except ArchiveLimitError as exc:
        raise SourceError(str(exc)) from None
    raise SourceError(
        f"{archive} is neither a folder nor a zip or tar archive; expected the dataset as a "
        f"folder, .zip, .tar.gz, .tgz or .tar (a downloaded file that is an HTML error page: "
        f"delete it and check data.url)"
    )


def _extract_zip(archive: Path, dest: Path, root: Path, budget: ArchiveBudget, progress: bool, tqdm) -> None:
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
        for info in tqdm(infos, desc="extracting", unit="file", disable=not progress, mininterval=1.0):
            reason = _unsafe_name(info.filename)
            mode = info.external_attr >> 16
            if reason is None and stat.S_ISLNK(mode):
                reason = "symbolic link"
            elif reason is None and mode and (stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)):
                reason = "device file, fifo or socket"
            if reason:
                raise _refuse(archive, info.filename, reason)
            target = (dest / info.filename.replace("\\", "/")).resolve()
            if target != root and root not in target.parents:
                raise _refuse(archive, info.filename, "resolves outside the target folder")
            if any(is_junk(part) for part in PurePosixPath(info.filename.replace("\\", "/")).parts):
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if info.flag_bits & 0x1:
                raise SourceError(
                    f"member {info.filename!r} of {archive} is encrypted (password-protected); extract the "
                    f"archive yourself with its password and point data.path at the folder"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
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


def _extract_tar(
    archive: Path, dest: Path, budget: ArchiveBudget, progress: bool, tqdm, notes: list[str] | None
) -> None:
    renamed = 0
    try:
        # Streaming mode: one pass over a compressed archive, members checked as they come.
        with tarfile.open(archive, "r|*", tarinfo=_EndAwareTarInfo, errors="surrogateescape") as tf:
            tf.cxr_end_marker = False
            for member in tqdm(tf, desc="extracting", unit="file", disable=not progress, mininterval=1.0):
                fixed, changed = _utf8_name(Path(member.name))
                if changed:
                    member.name = fixed.as_posix()
                    renamed += 1
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
                    budget.admit(member.name, member.size)
                    budget.count(member.name, member.size, member.size)
                # The 'data' filter is a second line of defence (and drops odd permission bits).
                tf.extract(member, dest, filter="data")
            complete = tf.cxr_end_marker
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


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _filename_from_url(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    return name or "dataset.download"


def download_target(url: str, dest_dir: Path, sha256: str | None = None) -> Path:
    """Where ``url`` is kept: ``dest_dir/<key>/<file name>``, the key a hash of the URL (and the
    expected sha256 when given), so a changed ``data.url`` never reuses another URL's file."""
    expected = sha256.lower().strip() if sha256 else ""
    key = hashlib.sha256(f"{url}\n{expected}".encode()).hexdigest()[:16]
    return Path(dest_dir) / key / _filename_from_url(url)


def archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete zip or tar archive (None: it is). Used where the server sent
    no Content-Length, so only the archive's own end markers tell a complete file from a cut one."""
    if zipfile.is_zipfile(path):  # the end-of-central-directory record sits at the very end
        return None
    try:
        with tarfile.open(path, "r:*", tarinfo=_EndAwareTarInfo) as tf:
            tf.cxr_end_marker = False
            for _ in tf:
                pass
            if not tf.cxr_end_marker:
                return "a tar without its end-of-archive blocks"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return f"not a complete zip or tar archive ({type(exc).__name__}: {exc})"
    return None


def _read_body(resp, f, bar, *, chunk_size: int, timeout: float, min_rate: int, clock=time.monotonic) -> None:
    """Copy the response body to ``f``, abandoning it when fewer than ``min_rate`` bytes/s arrive over any
    ``timeout``-second window. The socket timeout alone is per read: a server sending a byte every
    two seconds would never trip it. ``read1`` returns what one socket read gives, so the rate is
    checked however slowly bytes trickle in."""
    start = last = clock()
    window_start, window_bytes = start, 0
    while True:
        block = resp.raw.read1(chunk_size)
        if not block:
            return
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
) -> Path:
    """Download ``url`` into ``dest_dir`` (resuming a ``.part`` file) and return the file.

    The file lives under a key of the URL (and ``sha256``): :func:`download_target`. A file already
    complete there is reused. Only a complete file gets its final name: as long as the server
    said (Content-Length), or, without one, a zip or tar whose end markers are present; with
    ``sha256`` the file must also match (it is deleted on a mismatch). A server that ignores the
    Range header sends the whole file again: the partial file is then restarted rather than
    appended to. A download slower than ``min_rate`` bytes/s over ``timeout`` seconds is abandoned
    (and resumes on the next run).
    """
    import requests
    import urllib3
    from tqdm import tqdm

    notes = [] if notes is None else notes
    if not url or urlparse(url).scheme not in ("http", "https"):
        raise SourceError(f"data.url must be an http(s) link to the dataset archive, found {url!r}")
    final = download_target(url, dest_dir, sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    expected = sha256.lower().strip() if sha256 else None

    if final.exists():
        notes.append(f"reusing {final} (downloaded earlier from this URL; delete it to download again)")
        return final
    offset = part.stat().st_size if part.exists() else 0
    # identity: the bytes on disk are the file itself, so Content-Length and Range count the same bytes.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    total = None
    try:
        with requests.get(url, stream=True, headers=headers, timeout=timeout) as resp:
            if offset and resp.status_code == 416:
                # Range not satisfiable: the partial file is already as long as the remote
                # one (or longer, if the remote file changed). Start over to be sure.
                resp.close()
                part.unlink()
                return download(
                    url,
                    dest_dir,
                    sha256=sha256,
                    progress=progress,
                    notes=notes,
                    chunk_size=chunk_size,
                    timeout=timeout,
                    min_rate=min_rate,
                )
            if resp.status_code >= 400:
                raise SourceError(
                    f"download of {url} failed: HTTP {resp.status_code} {resp.reason}; "
                    f"check data.url (is the link still valid, does it need a login?)"
                )
            resumed = (
                offset > 0
                and resp.status_code == 206
                and resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            )
            if offset and not resumed:
                notes.append("server ignored the resume request: downloading from the start")
                offset = 0
            elif resumed:
                notes.append(f"resumed download at byte {offset}")
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            with (
                open(part, "ab" if resumed else "wb") as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=final.name,
                    disable=not progress,
                    mininterval=1.0,
                ) as bar,
            ):
                _read_body(resp, f, bar, chunk_size=chunk_size, timeout=timeout, min_rate=min_rate)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(
            f"download of {url} interrupted: {type(exc).__name__}: {exc}; run the stage again to resume "
            f"from {part} ({part.stat().st_size if part.exists() else 0} bytes so far)"
        ) from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise SourceError(f"download of {url} incomplete: {got} of {total} bytes; run the stage again to resume")
    if expected:
        actual = sha256_file(part)
        if actual != expected:
            part.unlink()
            raise SourceError(
                f"sha256 mismatch for {final.name} from {url}: expected {expected}, got {actual}; "
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
    os.replace(part, final)
    notes.append(f"downloaded {url} -> {final} ({got} bytes)")
    return final


# --------------------------------------------------------------------------------------------
# Kaggle
# --------------------------------------------------------------------------------------------

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
