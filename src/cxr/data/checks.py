"""Verifying one image file: hashed, fully decoded, checked against the pixel limit and what a chest
radiograph cannot be; never raising for a bad file.

    chk = check_file("data/raw/train/NORMAL/IM-0115-0001.jpeg", max_pixels, plausibility)
    chk.reason     # None: usable (chk.sha256, chk.width, chk.height, chk.mode); else a stable code + chk.detail

Split (the manifest), the external sets and the hostile-input tests use it; ``cxr predict`` applies the
same limits (:mod:`cxr.data.limits`) to what it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from cxr.data.config import Plausibility
from cxr.data.limits import ImageLimits
from cxr.data.pool import imap_progress
from cxr.data.safefs import UNREADABLE, entry_problem, open_regular, sha256_stream

# Quarantine reasons of the file checks (stable codes; the detail column says more).
EMPTY = "empty_file"
NOT_IMAGE = "not_an_image"
TRUNCATED = "truncated_or_corrupt"
TOO_LARGE = "too_many_pixels"


@dataclass(frozen=True)
class FileCheck:
    """What verification found for one file: sha256 and geometry, or why it is unusable."""

    sha256: Optional[str] = None
    width: int = 0
    height: int = 0
    mode: str = ""
    reason: Optional[str] = None  # None = usable
    detail: str = ""


@contextlib.contextmanager
def strict_pillow(max_pixels: int) -> Iterator[None]:
    """Pillow settings for verification, restored afterwards.

    Another module (or a user's sitecustomize) may have set LOAD_TRUNCATED_IMAGES, which would let
    truncated files through; Pillow's bomb limit is aligned with ours so its warning/error fires
    at the same size.
    """
    old_trunc, old_max = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = old_trunc, old_max


def check_bytes(data: bytes, max_pixels: int, plausibility: Plausibility | None = None) -> FileCheck:
    """Hash and fully decode one file's bytes; never raises for a bad file."""
    if not data:
        return FileCheck(reason=EMPTY, detail="zero-byte file")
    return _check_stream(io.BytesIO(data), hashlib.sha256(data).hexdigest(), max_pixels, plausibility)


def _check_stream(fp, digest: str, max_pixels: int, plausibility: Plausibility | None) -> FileCheck:
    """Decode the image in the open (seekable) binary file ``fp``; ``digest`` is its sha256."""
    limits = ImageLimits(max_pixels, plausibility or Plausibility())
    with strict_pillow(max_pixels):
        try:
            with Image.open(fp) as img:
                w, h = img.size
                mode = img.mode
                # Checked before any pixel is decoded: a bomb is a small file with a huge header.
                if w * h > max_pixels:
                    return FileCheck(
                        digest, w, h, mode, TOO_LARGE, f"{w}x{h} = {w * h} pixels > split.max_pixels = {max_pixels}"
                    )
                if img.format == "JPEG":
                    # DCT-domain 1/8 scale still reads every entropy-coded byte, so truncation and
                    # corruption are still detected, ~1.5x faster than a full-size decode.
                    img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
                # What cannot be a chest radiograph: tiny, extreme aspect, constant, noise.
                odd = limits.implausible(w, h, _stat_pixels(img))
                if odd is not None:
                    return FileCheck(digest, w, h, mode, odd[0], odd[1])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return FileCheck(digest, reason=TOO_LARGE, detail=f"{exc} (split.max_pixels = {max_pixels})")
        except UnidentifiedImageError:
            return FileCheck(digest, reason=NOT_IMAGE, detail="Pillow cannot identify an image format in this file")
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Pillow reports truncated/corrupt streams as OSError, some plugins as SyntaxError.
            return FileCheck(digest, reason=TRUNCATED, detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a broken file must never stop the stage
            return FileCheck(digest, reason=UNREADABLE, detail=f"{type(exc).__name__}: {exc}")
    return FileCheck(digest, w, h, mode)


def _stat_pixels(img) -> np.ndarray:
    """Intensities of a loaded Pillow image for the plausibility statistics (16-bit/float scaled to 0..255)."""
    if img.mode == "L":
        return np.asarray(img)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        return arr * (255.0 / top) if top > 0 else arr
    return np.asarray(img.convert("L"))


def check_file(path: str | Path, max_pixels: int, plausibility: Plausibility | None = None) -> FileCheck:
    """:func:`check_bytes` for a file on disk, streamed (memory stays flat, whatever its size): hashed in
    chunks, then decoded from the open file. Links and FIFOs, sockets, devices are reported without
    being read (:func:`cxr.data.safefs.open_regular`); unreadable files are reported, not raised."""
    problem = entry_problem(path)  # the file itself: a linked class folder (as the real-data tests use) is fine
    if problem is not None:
        return FileCheck(reason=problem[0], detail=problem[1])
    try:
        with open_regular(path) as f:
            digest, n = sha256_stream(f)
            if n == 0:
                return FileCheck(reason=EMPTY, detail="zero-byte file")
            f.seek(0)
            return _check_stream(f, digest, max_pixels, plausibility)
    except OSError as exc:
        return FileCheck(reason=UNREADABLE, detail=f"{type(exc).__name__}: {exc}")


def check_files(
    raw_dir: str | Path,
    paths: Sequence[str],
    max_pixels: int,
    workers: int = 0,
    progress: bool = True,
    plausibility: Plausibility | None = None,
) -> list[FileCheck]:
    """:func:`check_file` for raw-relative ``paths``, in order, on every core."""
    full = [str(Path(raw_dir) / p) for p in paths]
    fn = partial(check_file, max_pixels=max_pixels, plausibility=plausibility)
    return list(imap_progress(fn, full, workers=workers, desc="verify", progress=progress))
