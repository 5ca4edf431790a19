"""Importing a found layout into the canonical tree ``<out>/{train,val,test}/{NORMAL,PNEUMONIA}/``.

    counts = import_any(src, Path("data/raw"), notes, link=True, progress=True, limits=cfg.archive)

A folder is hardlinked (or copied), an archive extracted next to the output and moved in. Every entry
not taken in (a link, a special file, a file outside the class folders) is listed with its reason in
``<out>/skipped.csv``, which the split stage adds to its quarantine report.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from cxr import CLASSES, SPLITS
from cxr.data import SKIPPED_COLUMNS, SKIPPED_REPORT, SourceError, is_junk
from cxr.data.archives import extract_archive
from cxr.data.config import ArchiveLimits
from cxr.data.layout import Layout, find_class_layout, find_layout
from cxr.data.safefs import UNREADABLE, utf8_name, walk_files
from cxr.files import csv_quoting
from cxr.stage import progress_bar


def reset_tree(out_dir: Path) -> None:
    if out_dir.is_symlink() or out_dir.is_file():
        out_dir.unlink()
    elif out_dir.exists():
        shutil.rmtree(out_dir)
    for split in SPLITS:
        for label in CLASSES:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)


OUTSIDE = "outside_class_folder"
DUPLICATE = "duplicate_member"


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
    folder are kept, so equal file names in them cannot collide. Nothing is dropped without a word:
    symbolic links (never followed), FIFOs, sockets and devices (never opened), files and folders
    that cannot be read, and whatever lies in a split folder outside its class folders (a loose
    file, ``train/Normal /``, ``train/NORMAL_batch2/``) are appended to ``skipped`` (path as it
    would have been in ``out_dir``, reason, detail) and written to ``out_dir/skipped.csv``, which
    the split stage adds to its quarantine report.
    """
    if mode not in ("link", "copy", "move"):
        raise ValueError(f"mode must be link, copy or move, found {mode!r}")
    reset_tree(out_dir)
    skipped = [] if skipped is None else skipped
    jobs, renamed = [], 0
    for split, per in layout.dirs.items():
        for label, folder in per.items():
            for f, problem in walk_files(folder, skip=is_junk):
                rel, changed = utf8_name(f.relative_to(folder))
                renamed += changed
                if problem is None:
                    jobs.append((split, label, f, rel))
                else:
                    skipped.append(_row(f"{split}/{label}/{rel.as_posix()}", *problem))
    if not layout.flat:
        skipped += _outside_class_folders(layout)
    counts = _place(jobs, out_dir, mode, progress, skipped)
    if renamed and notes is not None:
        notes.append(f"{renamed} file name(s) were not valid UTF-8: decoded as latin-1")
    if skipped:
        write_skipped(out_dir, skipped)
        if notes is not None:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(Counter(r["reason"] for r in skipped).items()))
            notes.append(
                f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} not imported ({reasons}), listed in "
                f"{out_dir / SKIPPED_REPORT} and in the split stage's quarantine report"
            )
    return counts


def _row(path: str, reason: str, detail: str) -> dict:
    return {"path": path, "reason": reason, "detail": detail}


def _outside_class_folders(layout: Layout) -> list[dict]:
    """Every entry of a split folder that is not in one of its class folders: it has no label.

    A folder only nearly named like a class (``Normal `` with a trailing space, ``PNEUMONİA`` with a
    dotted capital I, ``NORMAL_batch2``) is not one: each file in it is reported, never dropped."""
    rows = []
    for split, per in layout.dirs.items():
        taken = set(per.values())
        split_dir = next(iter(per.values())).parent
        for f, problem in walk_files(split_dir, skip=is_junk):
            rel = utf8_name(f.relative_to(split_dir))[0]
            if any(c == f or c in f.parents for c in taken):
                continue
            where = f"{split}/{rel.parts[0]}/" if len(rel.parts) > 1 else f"{split}/"
            if problem is not None:
                rows.append(_row(f"{split}/{rel.as_posix()}", *problem))
                continue
            rows.append(
                _row(
                    f"{split}/{rel.as_posix()}",
                    OUTSIDE,
                    f"lies in {where}, not in NORMAL/ or PNEUMONIA/ (class folders must be named exactly that, in any "
                    f"letter case), so it has no label: move it into its class folder"
                    + (" or rename the folder" if len(rel.parts) > 1 else ""),
                )
            )
    return rows


def _place(jobs: list, out_dir: Path, mode: str, progress: bool, skipped: list[dict]) -> dict[str, dict[str, int]]:
    """Link, copy or move each (split, label, source, relative path); an unreadable source is reported."""
    counts = {split: {label: 0 for label in CLASSES} for split in SPLITS}
    can_link = mode == "link"
    for split, label, src, rel in progress_bar(jobs, desc="importing", unit="img", enabled=progress, mininterval=1.0):
        dst = out_dir / split / label / rel
        if len(rel.parts) > 1:
            dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if mode == "move":
                os.replace(src, dst)
            elif can_link:
                can_link = _link_or_copy(src, dst)
            else:
                shutil.copyfile(src, dst)
        except PermissionError as exc:
            skipped.append(
                _row(
                    f"{split}/{label}/{rel.as_posix()}",
                    UNREADABLE,
                    f"cannot be read ({exc.strerror}): not imported. Give this user read permission on it "
                    f"(chmod u+r), or remove it from the source",
                )
            )
            continue
        counts[split][label] += 1
    return counts


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hardlink ``src`` to ``dst``; where linking is refused, copy. Returns whether to keep linking."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError as exc:
        # Another filesystem, or hardlinks refused (protected_hardlinks, FAT, some network
        # mounts): copy this and every later file.
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    shutil.copyfile(src, dst)
    return False


def write_skipped(out_dir: Path, rows: list[dict]) -> Path:
    path = Path(out_dir) / SKIPPED_REPORT
    with path.open("w", newline="", encoding="utf-8") as f:
        cells = [v for r in rows for v in r.values()]
        w = csv.DictWriter(f, fieldnames=SKIPPED_COLUMNS, lineterminator="\n", quoting=csv_quoting(cells))  # type: ignore[arg-type]  # a csv.QUOTE_* constant
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["path"]))
    return path


def import_external(
    src: Path, out_dir: Path, notes: list[str], *, link: bool, progress: bool, limits: ArchiveLimits | None = None
) -> dict[str, dict[str, int]]:
    """An external set (a folder or archive with NORMAL/ and PNEUMONIA/) -> ``out_dir/test/<CLASS>/``, with
    fetch's guarantees: no link followed, no special file opened, archive limits enforced."""
    return import_any(src, out_dir, notes, link=link, progress=progress, limits=limits, find=find_class_layout)


def import_any(
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
    reset_tree(out_dir)
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
        duplicates = extract_archive(src, staging, progress=progress, limits=limits, notes=notes)
        layout = find(staging)
        _note_layout(layout, staging, notes)
        skipped = [_duplicate_row(src, staging, layout, member, detail) for member, detail in duplicates]
        return import_tree(layout, out_dir, mode="move", progress=progress, notes=notes, skipped=skipped)
    except SourceError as exc:
        # The staging folder is gone when the user reads this: name the archive they gave.
        raise SourceError(str(exc).replace(str(staging), f"{src} (extracted)")) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _duplicate_row(archive: Path, staging: Path, layout: Layout, member: str, detail: str) -> dict:
    """A duplicate archive member as a skipped row, under the path its first copy has in the raw tree."""
    target = staging / member
    for split, per in layout.dirs.items():
        for label, folder in per.items():
            if folder in target.parents:
                return _row(f"{split}/{label}/{target.relative_to(folder).as_posix()}", DUPLICATE, detail)
    return _row(f"{archive.name}:{member}", DUPLICATE, detail)


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
