"""DICOM files (or their bytes) -> uint8 grayscale pixels, the header read first within a budget.

    gray = dicom_gray8("scan.dcm", "scan.dcm", max_pixels)     # (H, W) uint8, or ImageReadError

The steps from stored values to gray levels are :mod:`cxr.serving.imageio`'s (modality LUT, VOI
LUT or window, 0..255, MONOCHROME1 inverted). Before any of that, the header alone is read with
pydicom's own ``stop_before_pixels`` and ``defer_size``, through a reader that allows it
:data:`HEADER_READ_BYTES`: a zero-filled file parses as endless empty (0000,0000) elements, and
pydicom's ``force=True`` used to read a 2 GB one for minutes. A file is refused, before the whole
of it is read, when its header is not found within that budget, when it has no pixel data, when
Rows x Columns is over the pixel limit, and when the file is larger than its header and declared
pixels allow.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cxr.serving.imageio import ImageReadError, Source, pixel_limit_error

# Bytes pydicom may read before it reaches the pixel data; values over DEFER_BYTES are skipped, not
# read, so a real header (a few KB of small values, a private blob or an icon) stays far under it.
HEADER_READ_BYTES = 256 * 1024
DEFER_BYTES = 64 * 1024
# What may follow the declared pixels: compressed data (at most twice the raw size here), trailing
# padding (FFFC,FFFC), a digital signature.
TRAILER_BYTES = 64 * 1024


class _OverBudget(Exception):
    """The header reader has read its budget without reaching the pixel data."""


class _Budgeted:
    """A binary file that raises :class:`_OverBudget` once more than ``limit`` bytes are read from it
    (a seek past a deferred value is free)."""

    def __init__(self, fp: BinaryIO, limit: int):
        self.fp, self.left = fp, limit

    def read(self, n: int | None = -1) -> bytes:
        want = self.left + 1 if n is None or n < 0 else min(n, self.left + 1)
        data = self.fp.read(want)
        self.left -= len(data)
        if self.left < 0:
            raise _OverBudget
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fp.seek(offset, whence)

    def tell(self) -> int:
        return self.fp.tell()


def _found(fp: BinaryIO) -> str:
    fp.seek(0)
    head = fp.read(4096)
    body = head[132:] if head[128:132] == b"DICM" else head  # after the preamble and its magic, if any
    return "only zero bytes" if not any(body) else "no pixel data element"


def read_header(fp: BinaryIO, name: str):
    """The data set up to its pixel data, ``fp`` left at the pixel data element; ImageReadError when
    the header is not found within :data:`HEADER_READ_BYTES` or the file has no pixel data."""
    import pydicom

    try:
        # force=True reads files written without the 128-byte preamble (named .dcm).
        ds = pydicom.dcmread(
            _Budgeted(fp, HEADER_READ_BYTES), force=True, stop_before_pixels=True, defer_size=DEFER_BYTES
        )
    except _OverBudget:
        raise ImageReadError(
            name,
            f"not a DICOM image: the first {HEADER_READ_BYTES // 1024} KiB hold {_found(fp)}, expected a header "
            "followed by pixel data; the file is damaged or not DICOM, re-export it",
        ) from None
    except Exception as exc:  # InvalidDicomError, OSError, EOFError, ValueError, ... : never a traceback
        raise ImageReadError(name, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not fp.read(1):
        raise ImageReadError(name, "DICOM file has no pixel data (a structured report or presentation state?)")
    fp.seek(-1, os.SEEK_CUR)
    return ds


def _geometry(ds, name: str) -> tuple[int, int, int, int]:
    """(columns, rows, frames, bytes per pixel x samples) of a header; ImageReadError when unusable."""
    try:
        cols, rows = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        depth = int(ds.get("SamplesPerPixel", 1) or 1) * -(-int(ds.get("BitsAllocated", 8) or 8) // 8)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(name, f"DICOM header has unusable Rows/Columns/NumberOfFrames ({exc})") from exc
    if cols < 1 or rows < 1 or frames < 1 or depth < 1:
        raise ImageReadError(
            name, f"DICOM header declares {cols}x{rows} pixels, {frames} frame(s): expected each >= 1; fix the header"
        )
    return cols, rows, frames, depth


def check_header(ds, name: str, header_end: int, size: int, max_pixels: int | None) -> None:
    """Rows x Columns x frames against the shared pixel limit (a 2 MB RLE file can declare 65535 x 65535),
    and the file's size against what its header declares: both before a pixel is read."""
    cols, rows, frames, depth = _geometry(ds, name)
    pixel_limit_error(name, cols, rows, frames, max_pixels)
    declared = cols * rows * frames * depth
    allowed = header_end + 2 * declared + TRAILER_BYTES
    if size > allowed:
        raise ImageReadError(
            name,
            f"DICOM file is {size:,} bytes but its header declares {cols}x{rows} pixels ({declared:,} bytes): "
            f"expected at most {allowed:,} bytes; the file is padded or damaged, re-export it",
        )


def _open(source: Source) -> tuple[BinaryIO, int]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), len(data)
    return open(source, "rb"), Path(source).stat().st_size


def dicom_size(source: Source, name: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    fp, _ = _open(source)
    with fp:
        cols, rows, _, _ = _geometry(read_header(fp, name), name)
    return cols, rows


def dicom_gray8(source: Source, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Full-resolution (H, W) uint8 pixels of a DICOM file or its bytes; ImageReadError for anything unusable."""
    import pydicom

    fp, size = _open(source)
    with fp:
        check_header(read_header(fp, name), name, fp.tell(), size, max_pixels)
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, force=True)  # bounded now: the header fits, the size fits the header
        except Exception as exc:
            raise ImageReadError(name, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    try:
        return _dicom_pixels(ds, name)
    except ImageReadError:
        raise
    except Exception as exc:  # an inconsistent header (Window Width 0, bad LUT, odd bit depths): this file only
        raise ImageReadError(
            name,
            f"invalid DICOM pixel settings ({type(exc).__name__}: {exc}); the file's "
            "header is inconsistent, fix it at the source",
        ) from exc


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range the VOI transform of ``ds`` maps onto, or None when it has none.

    Same rules as ``pydicom.pixels.apply_windowing`` (PS3.3 C.11.2.1.2); for a VOI LUT Sequence,
    the span of its LUT data.
    """
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        data = item.get("LUTData")
        if isinstance(data, (bytes, bytearray)):  # OW: raw words
            order = "<" if getattr(ds, "is_little_endian", True) in (True, None) else ">"
            data = np.frombuffer(bytes(data), dtype=f"{order}u2" if bits > 8 else "u1")
        if data is not None and np.size(data):
            # The LUT's own span: some files declare 16 bits and use 12.
            vals = np.asarray(data, dtype=np.float64)
            return float(vals.min()), float(vals.max())
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        elif int(ds.PixelRepresentation) == 0:
            lo, hi = 0.0, float(2**bits - 1)
        else:
            lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(lo, hi), max(lo, hi)
    return None


def _dicom_pixels(ds, name: str) -> np.ndarray:
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "WindowWidth" in ds and not ds.get("VOILUTSequence"):
        width = ds.WindowWidth
        width = width[0] if isinstance(width, MultiValue) else width
        if float(width) < 1:  # the window the file asks for cannot be applied (PS3.3 C.11.2.1.2)
            raise ImageReadError(
                name,
                f"DICOM Window Width (0028,1051) is {width}: it must be >= 1, so the "
                "image's window cannot be applied; fix the file's header",
            )
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(name, "DICOM file has no pixel data (a structured report or presentation state?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(name, f"multi-frame DICOM ({frames} frames): expected one radiograph per file")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # unsupported/compressed transfer syntax without a decoder plugin, truncated data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
        raise ImageReadError(
            name,
            f"cannot decode DICOM pixel data, {syntax}: {type(exc).__name__}: {exc}. "
            "Compressed DICOM needs a pydicom decoder plugin (pylibjpeg or gdcm)",
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        # Colour secondary capture: pydicom has converted YBR to RGB already; ITU-R 601 luma, as Pillow's convert('L').
        rgb = arr[..., :3].astype(np.float64)
        span = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        luma = (rgb @ np.array([0.299, 0.587, 0.114])) * (255.0 / span)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    if arr.ndim != 2:
        raise ImageReadError(name, f"unexpected DICOM pixel array shape {arr.shape} ({photometric})")

    values = np.asarray(apply_modality_lut(arr, ds))
    out_range = _voi_output_range(ds)
    if out_range is not None:
        if values.dtype.kind == "f" and "VOILUTSequence" in ds:
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integer modality values
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        lo, hi = out_range
    else:
        values = values.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if hi <= lo else (values - lo) * (255.0 / (hi - lo))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray
