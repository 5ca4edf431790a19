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

The pieces, one concern each: :mod:`cxr.data.download` (HTTP and Kaggle), :mod:`cxr.data.archives`
(safe extraction), :mod:`cxr.data.layout` (finding the split and class folders) and
:mod:`cxr.data.intake` (placing the images, reporting what was not taken).

Every file inside a class folder is taken, broken images included: the ``split`` stage decides
what is usable and reports what it quarantines. Only operating-system junk is dropped here.
Symbolic links are never followed and FIFOs, sockets and devices never opened; they, files and
folders that cannot be read, whatever lies in a split folder outside its class folders (a folder
only nearly named NORMAL counts as outside) and duplicate archive members are listed in
``<out>/skipped.csv``, which split adds to its quarantine report: no image is dropped without a
word. Two folders meaning one thing (``train/NORMAL`` and ``train/normal``, ``val/`` and
``validation/``) stop the import with both names. Archives are
extracted safely: a member that would land outside the target, a link, a device file, an
encrypted or damaged member, a cut tar, or more bytes than ``data.archive`` allows (a
decompression bomb) stops the extraction with an error naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from cxr import CLASSES, SPLITS
from cxr.data import SourceError
from cxr.data.config import DataConfig
from cxr.data.download import download, kaggle_download
from cxr.data.intake import import_any, reset_tree

__all__ = ["FetchReport", "SourceError", "fetch", "resolve_path"]


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
        counts = [[self.counts.get(s, {}).get(c, 0) for c in CLASSES] for s in SPLITS]
        rows: list[list[object]] = [[s, *c, sum(c)] for s, c in zip(SPLITS, counts)]
        rows.append(["total", *(sum(col) for col in zip(*counts)), self.total])
        return str(tabulate(rows, headers=["split", *CLASSES, "total"], tablefmt="plain"))


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

        reset_tree(out_dir)
        counts = generate(out_dir, cfg.synthetic)
        notes.append(f"synthetic images, seed {cfg.synthetic.seed}")
        return FetchReport("synthetic", out_dir, counts, notes)

    if cfg.source == "path":
        src = resolve_path(cfg.path, base_dir)
        _check_not_inside(src, out_dir)
        notes.append(f"source: {src}")
        counts = import_any(src, out_dir, notes, link=cfg.link, progress=progress, limits=cfg.archive)
        return FetchReport("path", out_dir, counts, notes)

    if cfg.source == "url":
        download_dir = _anchor(cfg.download_dir, base_dir)
        archive = download(
            cfg.url or "",  # empty: download() says data.url must be an http(s) link
            download_dir,
            sha256=cfg.sha256,
            progress=progress,
            notes=notes,
            timeout=cfg.timeout,
            min_rate=cfg.min_rate,
            max_bytes=cfg.archive.max_total_bytes,
        )
        counts = import_any(archive, out_dir, notes, link=False, progress=progress, limits=cfg.archive)
        return FetchReport("url", out_dir, counts, notes)

    if cfg.source == "kaggle":
        folder = kaggle_download(cfg.kaggle_dataset, _anchor(cfg.download_dir, base_dir) / "kaggle")
        notes.append(f"kagglehub: {cfg.kaggle_dataset} -> {folder}")
        counts = import_any(folder, out_dir, notes, link=cfg.link, progress=progress, limits=cfg.archive)
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
        return _not_a_system_folder(p)
    tried = [Path(base_dir) / p]
    if os.environ.get("DVC_ROOT"):
        tried.append(Path(os.environ["DVC_ROOT"]) / p)
    for candidate in tried:
        if candidate.exists():
            return _not_a_system_folder(candidate.resolve())
    raise SourceError(
        f"data.path {str(path)!r} not found (tried {', '.join(str(t) for t in tried)}); "
        f"give a path relative to the repository root or an absolute one"
    )


_SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/run"))


def _not_a_system_folder(p: Path) -> Path:
    """Refuse ``/`` and the kernel's folders: a walk there reads the whole disk, or files that are
    not files (``/proc/1/cwd``), long before it could find a dataset."""
    r = p.resolve()
    if r == Path(r.anchor) or any(r == s or s in r.parents for s in _SYSTEM_FOLDERS):
        what = "the root of the filesystem" if r == Path(r.anchor) else "a system folder"
        raise SourceError(
            f"data.path {p} is {what}: fetch would walk every file below it. Point data.path at the dataset "
            f"itself: the folder holding chest_xray/ (or train/ and test/), or its .zip/.tar.gz"
        )
    return p


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
