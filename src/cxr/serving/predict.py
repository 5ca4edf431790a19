"""Use a trained model: image files, folders or bytes -> P(pneumonia) and a label at the model's threshold
(REFER inside the model card's refer band).

    predictor = Predictor.from_dir("models/cnn")          # checkpoint folder written by cxr.checkpoint.save
    table = predictor.predict_paths(["x.jpeg", "scans/"]) # DataFrame: file, probability, label, error
    probs = predictor.predict_pixels(cache_images)        # uint8 (N, S, S) already at cache size

Command line: ``cxr predict IMAGES... [--model models/cnn]`` (see :mod:`cxr.serving.cli`).

Preprocessing comes from the checkpoint's JSON, never from literals: every input is decoded exactly
as the ``preprocess`` stage decoded the training images (:func:`cxr.serving.imageio.load_image`, which is
:func:`cxr.data.cache.decode_image` for raster files) at the checkpoint's ``cache_size`` and cache
resize mode, then :func:`cxr.training.engine.predict` applies the evaluation transform (antialiased resize to
``image_size``, /255, grayscale repeated to 3 channels, the checkpoint's mean/std). A file that was
in the cache therefore gets the very probability evaluation computed for it.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr import checkpoint
from cxr.checkpoint import ModelCard
from cxr.data import is_junk
from cxr.data.limits import ImageLimits
from cxr.data.safefs import walk_files
from cxr.device import resolve_device
from cxr.policy import operating_threshold
from cxr.serving.filenames import escape_name, printable
from cxr.serving.imageio import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    Source,
    describe_source,
    is_dicom,
    load_image,
    load_image_sized,
)
from cxr.stage import progress_bar
from cxr.training.engine import predict_probabilities

# probability = P(PNEUMONIA); warning: why the input may not be a chest radiograph (it is still predicted).
COLUMNS = ("file", "probability", "label", "error", "warning")

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class InputError:
    """An input argument that named no readable file (missing path, glob without matches)."""

    source: str
    reason: str


def _wanted(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    # DICOM is often written without an extension: recognise it by its content (a FIFO, socket or
    # device is never opened: reading it could block forever).
    return suffix == "" and path.is_file() and is_dicom(path)


_NOT_AN_IMAGE = (
    "not an image file type cxr predict reads ({kind}); skipped. It reads "
    + ", ".join(IMAGE_EXTENSIONS)
    + " and extension-less DICOM; name the file explicitly to try anyway"
)


def _scan_folder(folder: Path, skipped: list[InputError] | None = None) -> list[Path]:
    """Image files under ``folder``; every other entry (not OS junk) goes to ``skipped`` with the reason.

    Like fetch, the scan never follows a symbolic link and never opens a FIFO, socket or device; a
    folder it cannot list and a hidden folder (``.name``, not scanned) are reported too.
    """
    skipped = [] if skipped is None else skipped
    found, hidden = [], set()
    for path, problem in walk_files(folder, skip=is_junk):
        parts = path.relative_to(folder).parts
        dot = next((i for i, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        if dot is not None:
            hidden.add(folder.joinpath(*parts[: dot + 1]))
        elif problem is not None:
            skipped.append(InputError(str(path), f"{problem[1]}; skipped"))
        elif _wanted(path):
            found.append(path)
        else:
            kind = f"extension {path.suffix.lower()}" if path.suffix else "no extension, not DICOM"
            skipped.append(InputError(str(path), _NOT_AN_IMAGE.format(kind=kind)))
    for h in sorted(hidden):
        skipped.append(
            InputError(str(h), f"hidden folder: not scanned; name it (cxr predict {h}) to include its images")
        )
    return found


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[InputError]]:
    """Files named, image files under folders (recursive), and glob matches; duplicates dropped, order kept.

    A file named explicitly is read whatever its extension; folders and globs contribute files with
    an image extension (JPEG, PNG, WebP, GIF, BMP, TIFF, .dcm/.dicom) or extension-less DICOM files.
    """
    files: list[Path] = []
    errors: list[InputError] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = _scan_folder(p, errors)
            if not found:
                errors.append(InputError(str(raw), f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            for f in found:
                add(f)
        elif p.is_file():
            add(p)
        elif p.exists():
            errors.append(InputError(str(raw), "not a regular file (FIFO, socket or device); not read"))
        elif glob.has_magic(str(raw)):
            matches = sorted(glob.glob(str(raw), recursive=True))
            hits = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    hits += _scan_folder(mp, errors)
                elif mp.is_file() and _wanted(mp):
                    hits.append(mp)
            if not hits:
                errors.append(InputError(str(raw), "pattern matches no image files"))
            for f in hits:
                add(f)
        else:
            errors.append(InputError(str(raw), "no such file or folder"))
    return files, errors


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A loaded checkpoint and the preprocessing its JSON prescribes."""

    model: nn.Module
    card: ModelCard
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # split.max_pixels and split.plausibility's defaults: refused above the one pixel limit, warned when implausible.
    limits: ImageLimits = field(default_factory=ImageLimits.from_split)
    name: str = ""  # the model's name for people: its folder, or "cxr-pneumonia version 3 (models:/...)"
    # An operating point of the card (sensitivity-95): its threshold instead of the card's, and no refer band.
    operating_point: str | None = None

    def __post_init__(self):
        c = self.card
        self.cache_size = c.cache_size
        self.image_size = c.image_size
        self.mean = list(c.mean)
        self.std = list(c.std)
        # ValueError, saying why, for a point the card lacks or whose validation was too small for it
        self.threshold = operating_threshold(c, self.operating_point) if self.operating_point else c.threshold
        self.classes = c.classes
        self.resize = c.cache_resize
        self.arch_name = c.name
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        device: str | torch.device | None = None,
        name: str = "",
        operating_point: str | None = None,
    ) -> Predictor:
        dev = resolve_device(device)
        model, card = checkpoint.load(model_dir, device=dev)
        return cls(model, card, dev, name=name or str(model_dir), operating_point=operating_point)

    def at(self, operating_point: str | None) -> Predictor:
        """The same model answering at ``operating_point`` of its card (None: at the card's threshold)."""
        return dataclasses.replace(self, operating_point=operating_point or None)

    @property
    def provenance(self) -> str:
        """``model <name>; trained on <data>``: what CAM titles and ``cxr predict``'s files say of the model."""
        return f"model {self.name}; trained on {self.card.data_source.describe()}"

    # ---- pixels --------------------------------------------------------------------------

    def load(self, source: Source) -> np.ndarray:
        """(cache_size, cache_size) uint8: the input as the training cache holds images. Raises ImageReadError."""
        return load_image(source, self.cache_size, self.resize, max_pixels=self.limits.max_pixels)

    def _load_checked(self, source: Source) -> tuple[np.ndarray, str | None]:
        """Pixels and a warning when the input cannot be a chest radiograph (tiny, extreme aspect, constant, noise)."""
        pixels, (w, h) = load_image_sized(source, self.cache_size, self.resize, max_pixels=self.limits.max_pixels)
        odd = self.limits.implausible(w, h, pixels)
        return pixels, (None if odd is None else f"{odd[0]}: {odd[1]}; probably not a chest radiograph")

    def predict_pixels(self, images, batch_size: int = 64) -> np.ndarray:
        """P(pneumonia) for uint8 images at cache size (N, S, S): exactly the evaluation path, the card's
        temperature included (:meth:`cxr.checkpoint.ModelCard.calibrate`)."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if len(images) == 0:
            return np.zeros(0)
        raw = predict_probabilities(
            self.model,
            images,
            mean=self.mean,
            std=self.std,
            image_size=self.image_size,
            device=self.device,
            batch_size=batch_size,
        )
        return np.asarray(self.card.calibrate(raw))

    def label(self, probability: float) -> str:
        """The class at the checkpoint's validation-chosen threshold (PNEUMONIA when p >= threshold), or REFER
        inside its refer band (low <= p < high), also chosen on validation; at an operating point, the class at
        its threshold (the band belongs to the card's threshold)."""
        if self.operating_point:  # the band is the card threshold's: at another threshold, every image is decided
            return self.classes[1] if probability >= self.threshold else self.classes[0]
        return self.card.label(probability)

    def model_inputs(self, images: np.ndarray) -> torch.Tensor:
        """Normalised (N, 3, image_size, image_size) model inputs of cache-size uint8 images (for Grad-CAM)."""
        from cxr.data.augment import Normalize, eval_resize

        x = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1).to(self.device)  # a writable copy
        return Normalize(self.mean, self.std)(eval_resize(x, self.image_size))

    # ---- many inputs ---------------------------------------------------------------------

    def predict_sources(
        self,
        sources: Sequence[Source],
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
        progress: bool = False,
        cam_dir: str | Path | None = None,
        on_error=None,
    ) -> pd.DataFrame:
        """One row per source (file, probability, label, error [, cam]); unreadable sources get an error.

        Decoding and inference go ``batch_size`` inputs at a time, so memory stays flat on big
        folders. ``on_error(name, reason)`` is called for each unreadable input as it is met.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {batch_size}")
        names = [describe_source(s) for s in sources] if names is None else list(names)
        if len(names) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(names)} names")
        # Names as written (escape_name): a file name that is not UTF-8 would fail every writer, pandas' first.
        names = [escape_name(n) for n in names]
        cam_writer = _CamWriter(self, cam_dir) if cam_dir is not None else None
        rows: list[dict] = []
        bar = progress_bar(total=len(sources), desc="predict", unit="img", enabled=progress)  # a terminal only
        try:
            for start in range(0, len(sources), batch_size):
                chunk = range(start, min(start + batch_size, len(sources)))
                good, pixels, good_sources = [], [], []
                batch_rows = []
                for i in chunk:
                    row = {"file": names[i], "probability": math.nan, "label": None, "error": None, "warning": None}
                    try:
                        px, row["warning"] = self._load_checked(sources[i])
                        pixels.append(px)
                        good.append(row)
                        good_sources.append(sources[i])
                    except Exception as exc:  # one bad input never takes down the rest of the batch
                        reason = printable(
                            exc.reason
                            if isinstance(exc, ImageReadError)
                            else f"cannot read this input ({type(exc).__name__}: {exc})"
                        )
                        row["error"] = reason
                        if on_error is not None:
                            on_error(names[i], reason)
                    batch_rows.append(row)
                if pixels:
                    arr = np.stack(pixels)
                    probs = self.predict_pixels(arr, batch_size=len(arr))
                    for row, p in zip(good, probs):
                        row["probability"] = float(p)
                        row["label"] = self.label(float(p))
                    if cam_writer is not None:
                        for row, path in zip(good, cam_writer.write(arr, good_sources, good)):
                            row["cam"] = escape_name(str(path))
                rows += batch_rows
                bar.update(len(chunk))
        finally:
            bar.close()
        cols = list(COLUMNS) + (["cam"] if cam_writer is not None else [])
        return pd.DataFrame(rows, columns=cols)

    def predict_paths(
        self,
        inputs: Iterable[str | os.PathLike],
        *,
        batch_size: int = 32,
        progress: bool = False,
        cam_dir: str | Path | None = None,
        on_error=None,
    ) -> pd.DataFrame:
        """Expand files/folders/globs (:func:`collect_inputs`) and predict each; bad inputs become error rows."""
        files, input_errors = collect_inputs(inputs)
        table = self.predict_sources(
            [str(f) for f in files], batch_size=batch_size, progress=progress, cam_dir=cam_dir, on_error=on_error
        )
        if input_errors:
            errors = [(escape_name(e.source), printable(e.reason)) for e in input_errors]
            for source, reason in errors:
                if on_error is not None:
                    on_error(source, reason)
            extra = pd.DataFrame(
                [
                    {"file": source, "probability": math.nan, "label": None, "error": reason, "warning": None}
                    for source, reason in errors
                ],
                columns=table.columns,
            )
            table = pd.concat([table, extra], ignore_index=True) if len(table) else extra
        return table


class _CamWriter:
    """One Grad-CAM figure (cxr.explain.cam_figure) per image, at the input's own resolution: the original
    beside its overlay, a colour bar, P(pneumonia) and the label; names made unique."""

    def __init__(self, predictor: Predictor, cam_dir: str | Path):
        self.p = predictor
        self.dir = Path(cam_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()

    def _name(self, source_name: str) -> Path:
        stem = Path(source_name).stem or "image"
        candidate, k = f"{stem}_cam.png", 1
        while candidate in self.used:
            k += 1
            candidate = f"{stem}_{k}_cam.png"
        self.used.add(candidate)
        return self.dir / candidate

    def write(self, images: np.ndarray, sources: Sequence[Source], rows: Sequence[dict]) -> list[Path]:
        """``images`` at cache size (what the model saw), their ``sources`` (decoded again at full size) and
        their table ``rows`` (file, probability, label)."""
        from cxr.explain import cam_figure, cam_to_image, grad_cam, save_cam_figure
        from cxr.serving.imageio import read_gray8

        heat = grad_cam(self.p.model, self.p.arch_name, self.p.model_inputs(images))
        self.p.model.eval()
        paths = []
        for h, source, row in zip(heat, sources, rows):
            original = read_gray8(source, max_pixels=self.p.limits.max_pixels)
            full = cam_to_image(h, original.shape, self.p.resize)
            fig = cam_figure(original, full, row["probability"], row["label"], self.p.threshold, self.p.provenance)
            paths.append(save_cam_figure(fig, self._name(str(row["file"]))))
        return paths


__all__ = [
    "COLUMNS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "InputError",
    "Predictor",
    "collect_inputs",
]
