"""The refer band: images whose P(pneumonia) falls between two thresholds are answered REFER, not a class.

    record = choose_refer_band(val_labels, val_probs, threshold, target_error=0.05)   # validation only (train)
    decide(probs, threshold, (record["low"], record["high"]))   # 0 NORMAL, 1 PNEUMONIA, -1 REFER
    selective(labels, probs, threshold, band)                   # coverage and error among decided

The band's ends are class-conditional split-conformal quantiles (Mondrian conformal prediction, Vovk
et al. 2005; Angelopoulos & Bates 2021, section 4.1) at a level alpha, computed on the validation split:

- ``a``: the floor((n1 + 1) alpha)-th smallest validation P(pneumonia) among PNEUMONIA images (0 when that
  rank is 0). A new PNEUMONIA image falls below ``a`` with probability at most alpha.
- ``b``: the ceil((n0 + 1)(1 - alpha))-th smallest among NORMAL images (1 when that rank is beyond n0). A
  new NORMAL image falls above ``b`` with probability at most alpha.

The band is ``[min(a, t), max(b, t)]`` around the card's threshold ``t``: below it NORMAL, above it
PNEUMONIA, inside it REFER. Containing ``t``, it never changes a decided image's label (it only takes
images out), and no decided image contradicts its conformal set. So, for exchangeable validation and new
images of the same population, at most alpha of PNEUMONIA images are called NORMAL and at most alpha of
NORMAL images PNEUMONIA (each in expectation over the validation draw): the errors among decided images
are at most alpha of all images, and their share among the decided at most alpha / coverage.

alpha is the largest level, at most ``target_error``, whose band keeps the error among the decided
validation images at or below ``target_error``: the class-wise guarantee holds at alpha <= target, the
target on the decided validation images is met as measured (a plug-in estimate: on another site, the
external sets, it is only reported). torch-free, no new dependency: MAPIE's Mondrian/class-conditional
classifiers give the same quantiles but need an sklearn estimator around a network that is not one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REFER_CODE = -1  # decide()'s code for an image inside the band
ALPHA_STEPS = 200  # levels tried between target_error / ALPHA_STEPS and target_error


def conformal_ends(labels, probs, alpha: float) -> tuple[float, float]:
    """(a, b): the class-conditional split-conformal quantiles at level ``alpha`` (see the module)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=float)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    k1 = math.floor((len(pos) + 1) * alpha)
    a = float(pos[k1 - 1]) if 1 <= k1 <= len(pos) else 0.0
    k0 = math.ceil((len(neg) + 1) * (1 - alpha))
    b = float(neg[k0 - 1]) if 1 <= k0 <= len(neg) else 1.0
    return a, b


def band_at(labels, probs, threshold: float, alpha: float) -> tuple[float, float]:
    """(low, high) at level ``alpha``: low <= p < high is REFER. ``high`` is just above ``b`` (a NORMAL at b
    keeps NORMAL in the set) and never below the threshold; ``low`` never above it."""
    a, b = conformal_ends(labels, probs, alpha)
    return min(a, threshold), max(float(np.nextafter(b, 2.0)), threshold)


def decide(probs, threshold: float, band: tuple[float, float] | None) -> np.ndarray:
    """Per image: 1 PNEUMONIA (p >= threshold), 0 NORMAL, or REFER_CODE inside ``band`` (low <= p < high)."""
    p = np.asarray(probs, dtype=float)
    out = (p >= threshold).astype(int)
    if band is not None:
        out[(p >= band[0]) & (p < band[1])] = REFER_CODE
    return out


def selective(labels, probs, threshold: float, band: tuple[float, float] | None) -> dict[str, Any]:
    """coverage (share decided), error among decided (NaN when none is), and the counts."""
    y = np.asarray(labels).astype(int)
    d = decide(probs, threshold, band)
    decided = d != REFER_CODE
    n_decided = int(decided.sum())
    errors = int((d[decided] != y[decided]).sum())
    return {
        "n": len(y),
        "n_decided": n_decided,
        "n_refer": len(y) - n_decided,
        "n_errors": errors,
        "coverage": n_decided / len(y) if len(y) else float("nan"),
        "error_among_decided": errors / n_decided if n_decided else float("nan"),
    }


def alpha_grid(target_error: float, steps: int = ALPHA_STEPS) -> np.ndarray:
    """The levels tried, highest (narrowest band) first."""
    return np.linspace(target_error, target_error / steps, steps)


def choose_refer_band(labels, probs, threshold: float, target_error: float) -> dict[str, Any]:
    """The model card's refer record, chosen on validation: low, high, alpha, target_error, and the band's
    validation coverage and error among decided. No level meeting the target (a validation split too
    small to certify it): the widest band tried, which may refer nearly everything; the numbers say so."""
    if not 0 < target_error < 1:
        raise ValueError(f"target_error must be in (0, 1), found {target_error}")
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("the refer band needs both classes in the validation split")
    grid = alpha_grid(target_error)
    for alpha in grid:
        band = band_at(y, probs, threshold, float(alpha))
        s = selective(y, probs, threshold, band)
        if s["n_decided"] == 0 or s["error_among_decided"] <= target_error:
            break
    return {
        "low": band[0],
        "high": band[1],
        "alpha": float(alpha),
        "target_error": float(target_error),
        "method": "class-conditional split conformal",
        "val_coverage": s["coverage"],
        "val_error_among_decided": s["error_among_decided"],
        "n_val": s["n"],
    }


def band_curve(val_labels, val_probs, threshold: float, labels, probs, alphas) -> dict[str, np.ndarray]:
    """Coverage and error among decided on (``labels``, ``probs``) as the band widens: at each level of
    ``alphas`` the band is set on validation (``val_labels``, ``val_probs``), then applied. For the figure."""
    cov, err = [], []
    for alpha in alphas:
        s = selective(labels, probs, threshold, band_at(val_labels, val_probs, threshold, float(alpha)))
        cov.append(s["coverage"])
        err.append(s["error_among_decided"])
    return {"alpha": np.asarray(alphas, dtype=float), "coverage": np.asarray(cov), "error": np.asarray(err)}
