"""Image files (or their bytes) -> the uint8 grayscale pixels the model was trained on.

    gray = read_gray8("scan.dcm")                                 # (H, W) uint8, full resolution
    pixels = load_image("x.jpeg", size=meta["cache_size"], resize="stretch")   # (S, S) uint8, as cached

JPEG, PNG (8/16-bit; gray, RGB, RGBA, palette), BMP, TIFF go through
:func:`cxr.data.cache.decode_image` itself, the function that built the training cache, so a file
that was cached gives the identical array here (same JPEG draft decode, EXIF rotation, 16-bit
scaling, alpha handling, resampling). DICOM is recognised by its content (``DICM`` at byte 128),
or by a ``.dcm``/``.dicom`` name for files written without the preamble, and read with pydicom
(:mod:`cxr.serving.dicom`: the header first, within a byte budget and checked against the file's size):

1. Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence): stored values -> modality units;
2. VOI LUT Sequence, else Window Center/Width (``pydicom.pixels.apply_voi_lut``);
3. scaled to 0..255: from the VOI output range when a VOI transform was applied (so a window keeps
   its meaning), else from the image's own min..max (as the cache scales 16-bit PNGs);
4. MONOCHROME1 (white = low values) inverted, so bone is bright as in the training JPEGs;

then resized with the cache's own :func:`cxr.data.cache.resize_gray`. Anything unreadable raises
:class:`ImageReadError` naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.data.cache import decode_image, resize_gray
from cxr.data.config import RESIZE_MODES

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

# Extensions picked up when a folder is scanned (a file named explicitly is read whatever its name);
# any other file in a scanned folder is reported, never skipped silently.
RASTER_EXTENSIONS = (".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DICOM_EXTENSIONS = (".dcm", ".dicom")
IMAGE_EXTENSIONS = RASTER_EXTENSIONS + DICOM_EXTENSIONS
FORMATS_READ = "JPEG, PNG, WebP, GIF, BMP, TIFF or DICOM"  # what those extensions hold, for error messages
_DICM_OFFSET = 128


class ImageReadError(ValueError):
    """An input could not be turned into pixels; ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        reason = " ".join(reason.split())  # one line: decoders (pydicom) raise multi-line messages
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def describe_source(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def _head(source: Source, n: int = _DICM_OFFSET + 4) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:n])
    with open(source, "rb") as f:
        return f.read(n)


def is_dicom(source: Source) -> bool:
    """True for DICOM Part 10 content (``DICM`` magic after the 128-byte preamble), or a .dcm/.dicom name."""
    if not isinstance(source, (bytes, bytearray, memoryview)) and Path(source).suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        return _head(source)[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The pixel limit
# --------------------------------------------------------------------------------------------


def default_max_pixels() -> int:
    """The one pixel limit (``split.max_pixels``'s default): what split quarantines, predict and serving refuse."""
    from cxr.data.limits import ImageLimits

    return ImageLimits.from_split().max_pixels


def pixel_limit_error(name: str, width: int, height: int, frames: int, max_pixels: int | None) -> None:
    from cxr.data.config import SplitConfig
    from cxr.data.limits import ImageLimits

    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    why = ImageLimits(limit, SplitConfig().plausibility).check_pixels(width, height, frames)
    if why:
        raise ImageReadError(name, f"image too large, refused before decoding: {why}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _open_raster(source: Source):
    return io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source


def _check_source(source: Source, name: str) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError(name, "empty input (0 bytes)")
        return
    p = Path(source)
    if not p.exists():
        raise ImageReadError(name, "no such file")
    if not p.is_file():
        raise ImageReadError(name, "not a regular file")
    if p.stat().st_size == 0:
        raise ImageReadError(name, "empty file (0 bytes)")


def _raster_error(name: str, exc: Exception) -> ImageReadError:
    if isinstance(exc, UnidentifiedImageError):
        return ImageReadError(name, f"not a recognised image format (expected {FORMATS_READ})")
    if isinstance(exc, Image.DecompressionBombError):
        return ImageReadError(name, f"image too large, refused as a possible decompression bomb ({exc})")
    return ImageReadError(name, f"corrupt or truncated image ({type(exc).__name__}: {exc})")


def _check_raster_pixels(source: Source, name: str, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) from the header; refused above the pixel limit before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_open_raster(source)) as img:
                width, height = img.size
    except Exception as exc:
        raise _raster_error(name, exc) from exc
    pixel_limit_error(name, width, height, 1, max_pixels)
    return width, height


def image_size(source: Source) -> tuple[int, int]:
    """(width, height) of a file path or encoded bytes, from its header (no pixels decoded)."""
    name = describe_source(source)
    _check_source(source, name)
    if is_dicom(source):
        from cxr.serving.dicom import dicom_size

        return dicom_size(source, name)
    try:
        with Image.open(_open_raster(source)) as img:
            return img.size
    except Exception as exc:
        raise _raster_error(name, exc) from exc


def read_gray8(source: Source, max_pixels: int | None = None) -> np.ndarray:
    """Full-resolution single-channel uint8 pixels (H, W) of a file path or encoded bytes.

    Images above ``max_pixels`` (default: ``split.max_pixels``'s default) are refused before decoding.
    """
    from PIL import ImageOps

    from cxr.data.cache import to_gray8

    name = describe_source(source)
    _check_source(source, name)
    if is_dicom(source):
        from cxr.serving.dicom import dicom_gray8

        return dicom_gray8(source, name, max_pixels)
    _check_raster_pixels(source, name, max_pixels)
    try:
        with Image.open(_open_raster(source)) as img:
            ImageOps.exif_transpose(img, in_place=True)
            return np.asarray(to_gray8(img), dtype=np.uint8).copy()
    except Exception as exc:
        raise _raster_error(name, exc) from exc


def load_image(source: Source, size: int, resize: str = "stretch", max_pixels: int | None = None) -> np.ndarray:
    """The (size, size) uint8 image the training cache would hold for this file (or these bytes).

    ``size`` and ``resize`` are the checkpoint's ``cache_size`` and cache resize mode. Images above
    ``max_pixels`` (default: ``split.max_pixels``'s default, the limit split quarantines at) are
    refused before decoding.
    """
    return load_image_sized(source, size, resize, max_pixels)[0]


def load_image_sized(
    source: Source, size: int, resize: str = "stretch", max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image` and the original (width, height), for the plausibility checks."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: expected one of {list(RESIZE_MODES)}, found {resize!r}")
    name = describe_source(source)
    _check_source(source, name)
    if is_dicom(source):
        from cxr.serving.dicom import dicom_gray8

        gray = dicom_gray8(source, name, max_pixels)
        out = np.asarray(resize_gray(Image.fromarray(gray, mode="L"), int(size), resize), dtype=np.uint8)
        return out, (gray.shape[1], gray.shape[0])
    wh = _check_raster_pixels(source, name, max_pixels)
    try:
        # The very function that filled the cache: identical pixels for a cached file.
        return decode_image(_open_raster(source), int(size), resize), wh
    except Exception as exc:
        raise _raster_error(name, exc) from exc
