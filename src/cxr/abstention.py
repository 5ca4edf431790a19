"""The refer band: images whose P(pneumonia) falls between two thresholds are answered REFER, not a class.

    record = choose_refer_band(val_labels, val_probs, threshold, target_error=0.05)   # validation only (train)
    needed_images(0.05, confidence=0.95)                        # 59: fewer of a class, no band (record["status"])
    decide(probs, threshold, (record["low"], record["high"]))   # 0 NORMAL, 1 PNEUMONIA, -1 REFER
    selective(labels, probs, threshold, band)                   # coverage and error among decided

The band's ends are class-conditional split-conformal quantiles (Mondrian conformal prediction, Vovk
et al. 2005; Angelopoulos & Bates 2021, section 4.1) at a level alpha, computed on the validation split,
with the training-conditional correction (Vovk 2012, "Conditional validity of inductive conformal
predictors"): each end is the order statistic whose rank makes the guarantee hold with probability
``confidence`` over the draw of the validation split, not only on average over such draws.

- ``a``: the j1-th smallest validation P(pneumonia) among the n1 PNEUMONIA images, j1 the largest rank with
  P(Beta(j1, n1 + 1 - j1) <= alpha) >= confidence (:func:`tolerance_rank`). The share of new PNEUMONIA
  images below ``a`` is Beta(j1, n1 + 1 - j1)-distributed over validation draws, so it is at most alpha
  with probability ``confidence``.
- ``b``: likewise the j0-th largest among the n0 NORMAL images: at most alpha of new NORMAL images fall above.

The band is ``[min(a, t), max(b, t)]`` around the card's threshold ``t``: below it NORMAL, above it
PNEUMONIA, inside it REFER. Containing ``t``, it never changes a decided image's label (it only takes
images out). So, for validation and new images exchangeable (the same population), at most alpha of new
PNEUMONIA images are called NORMAL with probability ``confidence`` over the validation draw, and at most
alpha of new NORMAL images PNEUMONIA with probability ``confidence``: each class on its own. Both at once,
and so errors among all images at most alpha and among the decided at most alpha / coverage, hold with
probability at least 1 - 2 (1 - confidence) (90 % at 95 %; confidence squared when the two classes'
validation images are independent draws), not ``confidence``. ``confidence=None`` gives the plain
split-conformal ranks (j = floor((n + 1) alpha)), whose guarantee holds only in expectation over
validation draws. Exchangeable means more than the same population: the validation images must not have
chosen the model (its epoch, a sweep's configuration), and each is counted as an independent draw (several
images of one patient are not).

A class with fewer images than :func:`needed_images` (59 for alpha 5 % at 95 % confidence) cannot support
the level at all: :func:`choose_refer_band` then returns a record without a band (``status``) that says
so, rather than a band that refers everything or nothing. Otherwise alpha is the largest level, at most
``target_error``, whose band keeps the error among the decided validation images at or below
``target_error``. The bands are nested (a lower level, a wider band), so the chosen one holds what the band
at ``target_error`` holds: the certified level is ``target_error``; alpha itself, chosen on the same
images, is not certified. On another site (the external sets) nothing is guaranteed: it is only reported.
torch-free (numpy, scipy). MAPIE's class-conditional classifiers give the expectation quantiles but
need an sklearn estimator around a network that is not one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REFER_CODE = -1  # decide()'s code for an image inside the band
ALPHA_STEPS = 200  # levels tried between target_error / ALPHA_STEPS and target_error


STATUS_TOO_SMALL = "validation too small"  # a refer record's status when no band can be certified


def tolerance_rank(n: int, alpha: float, confidence: float | None) -> int:
    """The largest rank j (0..n) such that the j-th smallest of n exchangeable scores has at most ``alpha`` of
    new scores below it: with probability ``confidence`` over the n (P(Beta(j, n + 1 - j) <= alpha) >= confidence),
    or on average (``confidence`` None: floor((n + 1) alpha)). 0: no rank does (too few scores)."""
    if confidence is None:
        return min(n, math.floor((n + 1) * alpha))
    if n < 1:
        return 0
    from scipy.stats import beta

    j = np.arange(1, n + 1)
    ok = np.nonzero(beta.cdf(alpha, j, n + 1 - j) >= confidence)[0]  # decreasing in j
    return int(ok.max()) + 1 if len(ok) else 0


def needed_images(alpha: float, confidence: float | None) -> int:
    """The fewest scores of a class for which :func:`tolerance_rank` finds a rank: 1 - (1 - alpha)^n >= confidence
    (59 for alpha 0.05 at 95 %), or (n + 1) alpha >= 1 on average (19)."""
    n = 1
    while tolerance_rank(n, alpha, confidence) < 1:
        n += 1
    return n


def conformal_ends(labels, probs, alpha: float, confidence: float | None = None) -> tuple[float, float]:
    """(a, b): the class-conditional split-conformal ends at level ``alpha`` (see the module); a = 0 or b = 1
    where a class has too few images for the level."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=float)
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    j1 = tolerance_rank(len(pos), alpha, confidence)
    a = float(pos[j1 - 1]) if j1 >= 1 else 0.0
    j0 = tolerance_rank(len(neg), alpha, confidence)
    b = float(neg[len(neg) - j0]) if j0 >= 1 else 1.0
    return a, b


def band_at(labels, probs, threshold: float, alpha: float, confidence: float | None = None) -> tuple[float, float]:
    """(low, high) at level ``alpha``: low <= p < high is REFER. ``high`` is just above ``b`` (a NORMAL at b
    keeps NORMAL in the set) and never below the threshold; ``low`` never above it."""
    a, b = conformal_ends(labels, probs, alpha, confidence)
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


def describe_refer(refer: dict[str, Any]) -> str:
    """The refer record in words, for people (cxr predict, the report): the band and what it guarantees, why there
    is none, or '' when no band was asked for."""
    if not refer:
        return ""
    target = f"{100 * float(refer['target_error']):g} %"
    if refer.get("status") == STATUS_TOO_SMALL:
        return (
            f"no refer band (validation too small for a {target} target: {refer['n_normal']} NORMAL and "
            f"{refer['n_pneumonia']} PNEUMONIA images, at least {refer['needs']} of each needed)"
        )
    if "low" not in refer:
        return ""
    conf = refer.get("confidence")
    how = "in expectation over validation draws"
    if conf:  # each class on its own at conf; both at once (the union bound) at 1 - 2 (1 - conf)
        how = (
            f"each class with {100 * conf:g} % confidence over the validation draw, both at once with at least "
            f"{100 * max(0.0, 1 - 2 * (1 - conf)):g} %"
        )
    return (
        f"REFER for {refer['low']:.4f} <= p < {refer['high']:.4f} (split conformal on {refer.get('n_normal', '?')} "
        f"NORMAL and {refer.get('n_pneumonia', '?')} PNEUMONIA validation images, level "
        f"{100 * float(refer['alpha']):.2g} %: at most {target} of each class decided wrongly, {how}; target "
        f"{target} error among decided, met on validation)"
    )


def alpha_grid(target_error: float, steps: int = ALPHA_STEPS) -> np.ndarray:
    """The levels tried, highest (narrowest band) first."""
    return np.linspace(target_error, target_error / steps, steps)


def choose_refer_band(
    labels, probs, threshold: float, target_error: float, confidence: float | None = 0.95
) -> dict[str, Any]:
    """The model card's refer record, chosen on validation: low, high, alpha, target_error, confidence, and the
    band's validation coverage and error among decided. A class with fewer than :func:`needed_images` images:
    no band, ``status`` :data:`STATUS_TOO_SMALL` and ``needs`` (images of each class) say why. No level meeting
    the target: the widest band tried, which may refer nearly everything; the numbers say so."""
    if not 0 < target_error < 1:
        raise ValueError(f"target_error must be in (0, 1), found {target_error}")
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("the refer band needs both classes in the validation split")
    n0, n1 = int((y == 0).sum()), int((y == 1).sum())
    record: dict[str, Any] = {
        "target_error": float(target_error),
        "confidence": confidence,
        "method": "class-conditional split conformal"
        + (" (training-conditional)" if confidence is not None else " (in expectation)"),
        "n_val": len(y),
        "n_normal": n0,
        "n_pneumonia": n1,
    }
    needs = needed_images(target_error, confidence)
    if min(n0, n1) < needs:
        return {**record, "status": STATUS_TOO_SMALL, "needs": needs}
    for alpha in alpha_grid(target_error):
        band = band_at(y, probs, threshold, float(alpha), confidence)
        s = selective(y, probs, threshold, band)
        if s["n_decided"] == 0 or s["error_among_decided"] <= target_error:
            break
    return {
        **record,
        "low": band[0],
        "high": band[1],
        "alpha": float(alpha),
        "val_coverage": s["coverage"],
        "val_error_among_decided": s["error_among_decided"],
    }


def band_curve(
    val_labels, val_probs, threshold: float, labels, probs, alphas, confidence: float | None = None
) -> dict[str, np.ndarray]:
    """Coverage and error among decided on (``labels``, ``probs``) as the band widens: at each level of
    ``alphas`` the band is set on validation (``val_labels``, ``val_probs``, at ``confidence``), then applied.
    For the figure."""
    cov, err = [], []
    for alpha in alphas:
        band = band_at(val_labels, val_probs, threshold, float(alpha), confidence)
        s = selective(labels, probs, threshold, band)
        cov.append(s["coverage"])
        err.append(s["error_among_decided"])
    return {"alpha": np.asarray(alphas, dtype=float), "coverage": np.asarray(cov), "error": np.asarray(err)}
