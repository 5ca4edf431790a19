"""Limits on what outside input may cost, and what a chest radiograph cannot look like.

    budget = ArchiveBudget(archive, cfg.archive)       # data.archive: bytes, per member, ratio
    budget.admit(name, declared_size)                  # before a member is written
    budget.count(name, n)                              # as its bytes are written (sizes can lie)

    limits = ImageLimits.from_split(cfg)               # split.max_pixels + split.plausibility
    limits.check_pixels(w, h, frames=1)                # None, or why the image is refused (no decode yet)
    limits.implausible(w, h, small_gray)               # None, or why it cannot be a chest X-ray

One definition of each limit: ``split.max_pixels`` and ``split.plausibility`` in params.yaml, whose
defaults are the sections in :mod:`cxr.config`. The split stage quarantines what breaks them;
``cxr predict`` and the served model (which read no params) use the same defaults: an image
refused there is refused here, and a warning here is a quarantine there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cxr.data.config import ArchiveLimits, Plausibility, SplitConfig

# Quarantine reasons / warning codes (stable; the detail says more).
TOO_SMALL = "too_small"
EXTREME_ASPECT = "extreme_aspect_ratio"
CONSTANT = "blank_or_constant"
NOISE = "noise_not_an_image"


class ArchiveLimitError(RuntimeError):
    """An archive would write more than data.archive allows (a decompression bomb, or the limits are too low)."""


class ArchiveBudget:
    """What one archive's extraction has written, checked against ``data.archive``."""

    def __init__(self, archive: str | os.PathLike, limits: ArchiveLimits):
        self.archive = Path(archive)
        self.limits = limits
        self.size = max(1, os.path.getsize(archive))
        self.total = 0
        self._fix = (
            "; if the archive is genuine, raise the limit in params.yaml "
            "(dvc exp run -S data.archive.{key}=...), otherwise do not use it"
        )

    def _fail(self, what: str, key: str) -> ArchiveLimitError:
        return ArchiveLimitError(
            f"archive {self.archive} refused (a possible decompression bomb): {what}" + self._fix.format(key=key)
        )

    def admit(self, member: str, declared: int) -> None:
        """Refuse before writing when the declared size already breaks a limit."""
        lim = self.limits
        if declared > lim.max_member_bytes:
            raise self._fail(
                f"member {member!r} would be {declared:,} bytes uncompressed > "
                f"data.archive.max_member_bytes = {lim.max_member_bytes:,}",
                "max_member_bytes",
            )
        self._check_total(self.total + declared, member)

    def admit_total(self, declared_total: int) -> None:
        """Refuse before writing when the declared sizes of all members together break a limit."""
        self._check_total(declared_total, "(all members, as declared)")

    def count(self, member: str, n: int, member_so_far: int) -> None:
        """``n`` more bytes written (``member_so_far`` of this member); refuses once a limit is passed."""
        self.total += n
        if member_so_far > self.limits.max_member_bytes:
            raise self._fail(
                f"member {member!r} exceeds data.archive.max_member_bytes = "
                f"{self.limits.max_member_bytes:,} while extracting",
                "max_member_bytes",
            )
        self._check_total(self.total, member)

    def _check_total(self, total: int, member: str) -> None:
        lim = self.limits
        if total > lim.max_total_bytes:
            raise self._fail(
                f"more than data.archive.max_total_bytes = {lim.max_total_bytes:,} bytes uncompressed "
                f"(reached at member {member!r})",
                "max_total_bytes",
            )
        if total > lim.max_ratio * self.size:
            raise self._fail(
                f"{total:,} bytes uncompressed from a {self.size:,}-byte archive (at member {member!r}) "
                f"exceeds data.archive.max_ratio = {lim.max_ratio:g} x its size",
                "max_ratio",
            )


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    plausibility: Plausibility

    @classmethod
    def from_split(cls, cfg: SplitConfig | None = None) -> ImageLimits:
        cfg = cfg or SplitConfig()
        return cls(int(cfg.max_pixels), cfg.plausibility)

    def check_pixels(self, width: int, height: int, frames: int = 1) -> Optional[str]:
        """Why an image of this geometry is refused before decoding (None: fine)."""
        n = int(width) * int(height) * max(1, int(frames))
        if n > self.max_pixels:
            shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
            return f"{shape} = {n:,} pixels > split.max_pixels = {self.max_pixels:,} (a possible decompression bomb)"
        return None

    def implausible(self, width: int, height: int, gray: np.ndarray | None = None) -> Optional[tuple[str, str]]:
        """``(code, detail)`` when an image of ``width`` x ``height`` with (any-scale) pixels ``gray`` cannot be
        a chest radiograph; None when it can. Cheap: statistics of a small copy."""
        p = self.plausibility
        short, long_ = min(width, height), max(width, height)
        if short < p.min_side:
            return TOO_SMALL, f"{width}x{height}: shorter side {short} px < split.plausibility.min_side = {p.min_side}"
        if long_ / max(1, short) > p.max_aspect:
            return EXTREME_ASPECT, (
                f"{width}x{height}: aspect ratio {long_ / short:.1f} > split.plausibility.max_aspect = {p.max_aspect:g}"
            )
        if gray is None:
            return None
        g = _small(np.asarray(gray))
        lo, hi = np.percentile(g, [1, 99])
        if hi - lo < p.min_range:
            return CONSTANT, (
                f"grey levels 1st-99th percentile {lo:.0f}..{hi:.0f}: range {hi - lo:.0f} < "
                f"split.plausibility.min_range = {p.min_range} (blank, black, white or constant)"
            )
        smooth = smoothness(g)
        if smooth < p.min_smoothness:
            return NOISE, (
                f"neighbouring-pixel correlation {smooth:.2f} < split.plausibility.min_smoothness = "
                f"{p.min_smoothness:g}: random noise, not a radiograph"
            )
        return None


def _small(gray: np.ndarray, side: int = 128) -> np.ndarray:
    """A strided copy of at most about ``side`` x ``side`` pixels, float64 (statistics only)."""
    if gray.ndim == 3:
        gray = gray.mean(axis=-1)
    sy, sx = max(1, gray.shape[0] // side), max(1, gray.shape[1] // side)
    return np.asarray(gray[::sy, ::sx], dtype=np.float64)


def smoothness(gray: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically neighbouring pixels (1: smooth, ~0: noise)."""
    out = []
    for a, b in ((gray[:, :-1], gray[:, 1:]), (gray[:-1, :], gray[1:, :])):
        if a.size < 4:
            continue
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        if den > 0:
            out.append(float((a * b).sum()) / den)
    return float(np.mean(out)) if out else 1.0
