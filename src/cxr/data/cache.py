"""The decoded-image cache (`preprocess` stage): every manifest image decoded once, one array per split.

Run by ``dvc repro preprocess``, i.e.::

    python src/preprocess.py --params params.yaml --raw data/raw --manifest data/manifest.csv --out data/cache

Layout of the cache folder, per split ``s`` in train, val, test (empty splits have N = 0)::

    {s}_images.npy   uint8 (N, S, S), single channel, S = cache_size; open with mmap_mode="r"
    {s}_labels.npy   int64 (N,), 0 NORMAL, 1 PNEUMONIA
    {s}.csv          path, label, patient_id: row i describes image i
    info.json        cache_size, resize, classes, counts, data_version (written last: its
                     presence marks a complete cache)

Decoding a full-size JPEG costs ~10 ms on one core; here it happens once, with Pillow's draft mode
(DCT-domain downscale while decoding) and on every core, streamed into memory-mapped files so
memory does not grow with the dataset. :func:`decode_image` is the one place an image file becomes
pixels: prediction code must use it too, so training and serving see identical inputs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from cxr import CLASSES, SPLITS
from cxr.data.config import RESIZE_MODES, PreprocessConfig
from cxr.data.manifest import manifest_csv_bytes, read_manifest
from cxr.data.pool import imap_progress
from cxr.files import write_csv

INFO_FILE = "info.json"
_REBUILD = "Run `dvc repro preprocess` to build it."
_DRAFT_OVERSAMPLE = 1  # JPEG draft decodes to >= this x the target side (see decode_image)


class CacheError(FileNotFoundError):
    """The cache is missing, incomplete or inconsistent."""


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def to_gray8(img: Image.Image) -> Image.Image:
    """Single-channel 8-bit ('L') version of ``img``.

    Pillow's convert('L') clips 16-bit and float pixels at 255, which turns most of a 12/16-bit
    radiograph white; those are rescaled from their own min..max range instead.
    """
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent regions become black (the padding colour), not whatever colour hides under alpha.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("L")  # RGB, CMYK, P, 1, YCbCr: ITU-R 601 luma


def resize_gray(img: Image.Image, size: int, resize: str) -> Image.Image:
    """``img`` ('L') as size x size: 'stretch' ignores the aspect ratio (as the reference
    Resize((224, 224)) does); 'pad' keeps it and centres the image on black."""
    # BILINEAR in Pillow is antialiased when shrinking (its filter support scales with the
    # factor), and it is what torchvision's Resize uses on PIL images.
    if resize == "stretch":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    if resize == "pad":
        w, h = img.size
        scale = size / max(w, h)
        new = (max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale))))
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(img.resize(new, Image.Resampling.BILINEAR), ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    raise ValueError(f"resize: expected one of {list(RESIZE_MODES)}, found {resize!r}")


def decode_image(path: str | Path, size: int, resize: str = "stretch") -> np.ndarray:
    """Decode one image file to a (size, size) uint8 array: grayscale, resized per ``resize``."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: expected one of {list(RESIZE_MODES)}, found {resize!r}")
    with Image.open(path) as img:
        if img.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding (an antialiased DCT-domain
            # downscale), never below the requested size, and emits luma only for 'L'. On the real
            # full-resolution X-rays, one core: asking for the target itself is 1.8x (256 px) to
            # 2.0x (128 px) faster than a full decode + resize and differs from it by 0.6 to 1.0
            # grey levels (mean |diff|); asking for 2x would halve that gap but be only 1.4-1.6x faster.
            img.draft("L", (_DRAFT_OVERSAMPLE * size, _DRAFT_OVERSAMPLE * size))
        ImageOps.exif_transpose(img, in_place=True)
        gray = to_gray8(img)
        return np.asarray(resize_gray(gray, size, resize), dtype=np.uint8)


def _decode_for_cache(path: str, size: int, resize: str) -> np.ndarray:
    try:
        return decode_image(path, size, resize)
    except Exception as exc:
        # The split stage verified every file; failing here means the raw tree changed since.
        raise RuntimeError(
            f"cannot decode {path}: {type(exc).__name__}: {exc}. The raw data changed after the split "
            f"stage verified it: run `dvc repro split preprocess`."
        ) from exc


# Memmaps this process has opened for writing, by (build id, file): each decoding worker opens the
# cache files once and writes its images in place, so no pixels travel between processes.
_OPEN_FOR_WRITE: dict[tuple[str, str], np.memmap] = {}


def _reserve_disk(path: Path) -> None:
    """Allocate ``path``'s blocks now, so a full disk fails here with a clear message rather than
    killing a decoding worker (SIGBUS) on a memory-mapped write half-way through."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    with open(path, "rb+") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheError(
                    f"not enough disk space for the image cache: {path} needs "
                    f"{size / 2**20:.1f} MiB. Free some space, or lower preprocess.cache_size."
                ) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise  # anything but "this filesystem cannot preallocate"


def _decode_into(task: tuple[str, int, str], build: str, size: int, resize: str) -> None:
    """Decode ``task`` = (images .npy file, row, image path) straight into row ``row`` of the file."""
    npy, row, path = task
    arr = _OPEN_FOR_WRITE.get((build, npy))
    if arr is None:
        arr = _OPEN_FOR_WRITE[(build, npy)] = np.load(npy, mmap_mode="r+")
    arr[row] = _decode_for_cache(path, size, resize)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def _data_version(manifest, cfg: PreprocessConfig) -> str:
    """The manifest's bytes plus how they were decoded: another cache_size or resize is other data
    (a resumed training run or an MLflow lookup must not mistake one for the other)."""
    data = Path(manifest).read_bytes() if isinstance(manifest, (str, Path)) else manifest_csv_bytes(manifest)
    data += f"|cache_size={cfg.cache_size}|resize={cfg.resize}".encode()
    return hashlib.sha256(data).hexdigest()[:12]


def build_cache(
    manifest: pd.DataFrame | str | Path,
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: PreprocessConfig,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Decode every manifest image once into ``out_dir`` (layout in the module docstring).

    ``manifest``: a DataFrame or the path of the manifest CSV (data_version hashes the file's
    bytes; for a DataFrame, the bytes write_manifest would write). ``workers`` overrides
    ``cfg.workers``. Images keep the manifest's row order within each split. Returns the info
    dict also written to info.json.
    """
    df = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    version = _data_version(manifest, cfg)
    raw_dir, out = Path(raw_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)  # until the new one is written, the cache is incomplete
    size = cfg.cache_size
    unknown = sorted(set(df["split"]) - set(SPLITS))
    bad_labels = sorted(set(df["label"]) - set(CLASSES))
    if unknown or bad_labels:
        raise ValueError(
            f"manifest has split(s) {unknown} / label(s) {bad_labels} outside {list(SPLITS)} / "
            f"{list(CLASSES)}: rerun `dvc repro split`."
        )

    parts = {s: df[df["split"] == s] for s in SPLITS}
    for s, part in parts.items():
        write_csv(part[["path", "label", "patient_id"]], out / f"{s}.csv")
        labels = part["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=np.int64)
        np.save(out / f"{s}_labels.npy", labels)
        # Allocated here, filled in place by the decoding workers.
        np.lib.format.open_memmap(
            out / f"{s}_images.npy", mode="w+", dtype=np.uint8, shape=(len(part), size, size)
        ).flush()
        _reserve_disk(out / f"{s}_images.npy")

    # One pool over every split in order. Each worker writes its decoded images into the
    # memory-mapped files itself: the parent only counts, so memory does not grow with the
    # dataset and no core is spent shipping pixels between processes.
    tasks = [
        (str(out / f"{s}_images.npy"), i, str(raw_dir / p)) for s in SPLITS for i, p in enumerate(parts[s]["path"])
    ]
    build = uuid.uuid4().hex
    fn = partial(_decode_into, build=build, size=size, resize=cfg.resize)
    n_workers = cfg.workers if workers is None else workers
    try:
        for _ in imap_progress(fn, tasks, workers=n_workers, desc="decode", progress=progress):
            pass
    finally:
        for key in [k for k in _OPEN_FOR_WRITE if k[0] == build]:  # the in-process case
            _OPEN_FOR_WRITE.pop(key).flush()
    for s in SPLITS:  # the workers' writes are in the page cache; on disk before info.json says "complete"
        with open(out / f"{s}_images.npy", "rb+") as f:
            os.fsync(f.fileno())

    counts = {
        s: {**{c: int((parts[s]["label"] == c).sum()) for c in CLASSES}, "total": int(len(parts[s]))} for s in SPLITS
    }
    info = {
        "cache_size": size,
        "resize": cfg.resize,
        "classes": list(CLASSES),
        "counts": counts,
        "data_version": version,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_info(cache_dir: str | Path) -> dict:
    """info.json of a complete cache; CacheError (telling how to build it) when there is none."""
    path = Path(cache_dir) / INFO_FILE
    if not path.is_file():
        why = "not found" if not Path(cache_dir).is_dir() else "incomplete (no info.json)"
        raise CacheError(f"image cache {why}: {cache_dir}. {_REBUILD}")
    return json.loads(path.read_text())


@dataclass
class CachedSplit:
    """One split of the cache; ``images`` is a read-only memmap, so loading costs no RAM."""

    images: np.ndarray  # (N, S, S) uint8, read-only memmap
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    patient_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_split(cache_dir: str | Path, split: str) -> CachedSplit:
    """The cached ``split`` (train, val or test) of ``cache_dir``."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, found {split!r}")
    info = load_info(cache_dir)
    d = Path(cache_dir)
    files = [d / f"{split}_images.npy", d / f"{split}_labels.npy", d / f"{split}.csv"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CacheError(f"image cache {d} lacks {missing}. {_REBUILD}")
    images = np.load(files[0], mmap_mode="r")
    labels = np.load(files[1])
    table = pd.read_csv(files[2], dtype=str, keep_default_na=False)
    size = info["cache_size"]
    if not (images.shape[1:] == (size, size) and len(images) == len(labels) == len(table)):
        raise CacheError(
            f"image cache {d} is inconsistent for {split!r}: images {images.shape}, "
            f"{len(labels)} labels, {len(table)} rows, cache_size {size}. {_REBUILD}"
        )
    return CachedSplit(
        images, labels.astype(np.int64, copy=False), table["path"].tolist(), table["patient_id"].tolist()
    )
