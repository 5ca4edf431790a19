"""Where the images are in a dataset copy: the split and class folders, in any letter case and depth.

    layout = find_layout(root)          # the train/val/test tree (Kaggle, Mendeley, flat NORMAL/PNEUMONIA)
    layout = find_class_layout(root)    # an external set: one folder holding NORMAL/ and PNEUMONIA/

Two folders that mean one thing (``train/NORMAL`` and ``train/normal``, ``val/`` and ``validation/``)
are refused with both names: taking one would silently lose the other's images.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cxr import CLASSES
from cxr.data import SourceError, is_junk
from cxr.data.safefs import walk_files

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


def _subdirs(folder: Path) -> dict[str, Path]:
    """Child folders by lower-cased name (junk skipped); first in sorted order wins on clashes."""
    out: dict[str, Path] = {}
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return out
    for child in children:
        # A linked folder is not entered (links never lead out of a source); the import reports it.
        if _is_real_dir(child) and not is_junk(child.name):
            if child.name.lower() in out and _SPLIT_ALIASES.get(child.name.lower()):
                _refuse_clash([out[child.name.lower()], child], f"the {_SPLIT_ALIASES[child.name.lower()]} split")
            out.setdefault(child.name.lower(), child)
    return out


def _is_real_dir(path: Path) -> bool:
    """A folder, not a link to one; False where even that cannot be told (no permission)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


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
            children = [c for c in folder.iterdir() if _is_real_dir(c) and not is_junk(c.name)]
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
            elif _is_real_dir(child):
                try:
                    inner = sorted(c.name for c in child.iterdir() if not is_junk(c.name))
                except OSError as exc:
                    items.append(f"{child.name}/ [cannot be listed: {exc.strerror}]")
                    continue
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


def _count_files(folder: Path) -> int:
    return sum(1 for _ in _iter_files(folder))
