"""Classification metrics for NORMAL (0) vs PNEUMONIA (1), computed with scikit-learn and scipy.

Positive class = PNEUMONIA. Probabilities are P(pneumonia); an image is called PNEUMONIA when
``p >= threshold`` (the convention of ``sklearn.metrics.roc_curve``, so a Youden threshold read off
the ROC reproduces that ROC point).

    m = binary_metrics(y, p, threshold)                  # point estimates (scikit-learn)
    ci = bootstrap_ci(y, p, threshold, 1000, seed=0)    # {metric: (low, high)} (scipy.stats.bootstrap)
    report = evaluate_predictions(y, p, threshold)       # both thresholds, each metric with its CI
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxr.calibration import logit
from cxr.metric_names import CI_METRICS, SELECT_METRICS, THRESHOLD_METHODS  # defined there; used and re-exported here

COUNT_KEYS = ("tp", "fp", "tn", "fn")
ECE_BINS = 10


def is_better(new: float, old: float | None, metric: str) -> bool:
    """Whether ``new`` beats ``old`` on ``metric`` (see SELECT_METRICS); ``old`` None: nothing to beat yet.
    A NaN (AUC of a single-class validation set) never beats a number; a number beats a NaN."""
    if metric not in SELECT_METRICS:
        raise ValueError(f"unknown selection metric {metric!r}; expected one of {list(SELECT_METRICS)}")
    if old is None:
        return True
    new, old = float(new), float(old)
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if SELECT_METRICS[metric] == "higher" else new < old


def row_is_better(new: dict, old: dict | None, metric: str) -> bool:
    """``is_better`` on two rows of validation metrics (an epoch, a configuration, a model); an exact tie
    on ``metric`` goes to the other selection metric. A small validation split saturates its ROC-AUC
    (1.000 from some epoch on): the lower loss then picks the epoch instead of whichever tied first."""
    if old is None or float(new[metric]) != float(old[metric]):
        return is_better(new[metric], None if old is None else old[metric], metric)
    other = next(m for m in SELECT_METRICS if m != metric)
    return other in new and other in old and is_better(new[other], old[other], other)


def choose_threshold(y_true, y_prob, method: str = "youden", default: float = 0.5) -> float:
    """Decision threshold from *validation* predictions.

    ``youden`` maximises Youden's J = sensitivity + specificity - 1 on the ROC curve; ``fixed``
    returns ``default``; ``midpoint`` is halfway, in logit space, between the median NORMAL and the
    median PNEUMONIA validation logit. Youden's point sits at the edge of the validation NORMALs
    (on a well-separated split, just above their tail), so normals that score a little higher
    elsewhere are all called PNEUMONIA; the midpoint leaves a margin to both classes. Both use
    class-conditional statistics only, so neither depends on the validation prevalence. With a
    single class present, ``default`` is returned.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {list(THRESHOLD_METHODS)}")
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    if method == "fixed" or len(np.unique(y_true)) < 2:
        return float(default)
    if method == "midpoint":
        logits = logit(y_prob)
        mid = (np.median(logits[y_true == 0]) + np.median(logits[y_true == 1])) / 2
        return float(1 / (1 + np.exp(-mid)))
    fpr, tpr, thr = roc_curve(y_true, y_prob)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # thr[0] is +inf (nothing predicted positive)
    return float(np.clip(thr[best], 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Point estimates
# --------------------------------------------------------------------------------------------


def _check_inputs(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels and probabilities must be 1-D of equal length, found shapes {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no predictions to score (empty split?)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"labels must be 0 (NORMAL) or 1 (PNEUMONIA), found values {sorted(set(np.unique(y).tolist()))}"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]; pass sigmoid(logits), not logits")
    return y.astype(int), p


def expected_calibration_error(y, p, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins: sum_b (n_b / N) |fraction positive_b - mean probability_b|.

    The reliability diagram (``calibration_points``) uses the same bins, so the two agree.
    """
    y, p = _check_inputs(y, p)
    idx = _bin_index(p, n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / len(y))


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p, side="right")


def binary_metrics(y, p, threshold: float = 0.5) -> dict:
    """Point estimates at ``threshold``: the CI_METRICS plus tp/fp/tn/fn counts and the threshold.

    Threshold-free metrics (ROC-AUC, PR-AUC) are NaN when only one class is present.
    """
    y, p = _check_inputs(y, p)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    with warnings.catch_warnings():
        # balanced_accuracy warns when a class is absent; we report what it returns.
        warnings.simplefilter("ignore")
        out = {
            "accuracy": accuracy_score(y, pred),
            "balanced_accuracy": balanced_accuracy_score(y, pred),
            "sensitivity": recall_score(y, pred, pos_label=1, zero_division=0),
            "specificity": recall_score(y, pred, pos_label=0, zero_division=0),
            "precision": precision_score(y, pred, zero_division=0),
            "f1": f1_score(y, pred, zero_division=0),
            "roc_auc": roc_auc_score(y, p) if both else float("nan"),
            "pr_auc": average_precision_score(y, p) if both else float("nan"),
            "brier": brier_score_loss(y, p, labels=[0, 1]),
            "ece": expected_calibration_error(y, p),
        }
    out = {k: float(v) for k, v in out.items()}
    out.update(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn), threshold=float(threshold))
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------


def average_precision_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``sklearn.metrics.average_precision_score(y, row)`` for every row of ``p`` (R, n), in one pass.

    A bootstrap calls it 1,000 times per set; one sklearn call per row (its input checks dominate)
    took 3.7 s of an evaluate stage. Same definition, ties included (bootstrap duplicates are ties):
    AP = sum over distinct scores, highest first, of (positives at that score / all positives) x the
    precision of predicting positive at and above it. tests/test_metrics.py checks it equals sklearn.
    """
    p = np.atleast_2d(np.asarray(p, dtype=float))
    y = np.asarray(y, dtype=float)
    order = np.argsort(-p, axis=1, kind="stable")
    scores = np.take_along_axis(p, order, axis=1)
    tp = np.cumsum(y[order], axis=1)
    ranks = np.arange(1, p.shape[1] + 1)
    # The last position of each run of equal scores: there the curve takes its step.
    last = np.ones_like(scores, dtype=bool)
    last[:, :-1] = scores[:, 1:] != scores[:, :-1]
    tp_at_last = np.where(last, tp, 0.0)
    # Positives reached at the previous step (tp never decreases, so a running max of the steps).
    prev = np.maximum.accumulate(np.concatenate([np.zeros((p.shape[0], 1)), tp_at_last[:, :-1]], axis=1), axis=1)
    gained = np.where(last, tp - prev, 0.0)
    return (gained * tp / ranks).sum(axis=1) / y.sum()


def _resample_statistic(threshold: float):
    """Vectorised statistic for ``scipy.stats.bootstrap`` over the two class samples.

    Receives P(pneumonia) of NORMAL images and of PNEUMONIA images, each of shape (..., n_class),
    and returns an array (len(CI_METRICS), ...) in CI_METRICS order. Equal to ``binary_metrics``
    on the unresampled data (tests check this).
    """

    def statistic(p_neg, p_pos, axis=-1):
        p_neg = np.moveaxis(np.asarray(p_neg, dtype=float), axis, -1)
        p_pos = np.moveaxis(np.asarray(p_pos, dtype=float), axis, -1)
        n_neg, n_pos = p_neg.shape[-1], p_pos.shape[-1]
        tp = (p_pos >= threshold).sum(-1).astype(float)
        fn = n_pos - tp
        fp = (p_neg >= threshold).sum(-1).astype(float)
        tn = n_neg - fp
        n = n_neg + n_pos
        sens = tp / n_pos
        spec = tn / n_neg
        pred_pos = tp + fp
        precision = np.divide(tp, pred_pos, out=np.zeros_like(tp), where=pred_pos > 0)
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
        # ROC-AUC is the Mann-Whitney U of positives vs negatives over n_pos * n_neg (ties count 1/2).
        auc = scipy.stats.mannwhitneyu(p_pos, p_neg, axis=-1).statistic / (n_pos * n_neg)

        batch_shape = p_neg.shape[:-1]
        p_all = np.concatenate([p_neg, p_pos], axis=-1).reshape(-1, n)
        y_all = np.r_[np.zeros(n_neg), np.ones(n_pos)]
        ap = average_precision_rows(p_all, y_all).reshape(batch_shape)
        brier = (((p_all - y_all) ** 2).mean(-1)).reshape(batch_shape)
        # ECE per row: bincount over (row, bin) pairs flattened into one index.
        rows = p_all.shape[0]
        flat = _bin_index(p_all, ECE_BINS) + ECE_BINS * np.arange(rows)[:, None]
        sum_p = np.bincount(flat.ravel(), weights=p_all.ravel(), minlength=rows * ECE_BINS)
        sum_y = np.bincount(
            flat.ravel(), weights=np.broadcast_to(y_all, p_all.shape).ravel(), minlength=rows * ECE_BINS
        )
        ece = (np.abs(sum_y - sum_p).reshape(rows, ECE_BINS).sum(-1) / n).reshape(batch_shape)

        values = {
            "accuracy": (tp + tn) / n,
            "balanced_accuracy": (sens + spec) / 2,
            "sensitivity": sens,
            "specificity": spec,
            "precision": precision,
            "f1": f1,
            "roc_auc": auc,
            "pr_auc": ap,
            "brier": brier,
            "ece": ece,
        }
        return np.stack([values[k] for k in CI_METRICS])

    return statistic


def bootstrap_ci(
    y,
    p,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "percentile",
) -> dict[str, tuple[float, float]]:
    """Bootstrap confidence intervals of every metric in CI_METRICS at a fixed ``threshold``.

    Images are resampled with replacement *within each class* (``scipy.stats.bootstrap`` with the
    NORMAL and PNEUMONIA probabilities as two independent samples), so every resample keeps the
    test set's class counts: sensitivity, specificity and AUC always exist, and the intervals
    describe the uncertainty of a test set of this size and prevalence. The threshold stays fixed
    (chosen on validation); re-choosing it per resample would answer a different question.
    With fewer than two images of a class, intervals are (nan, nan).
    """
    y, p = _check_inputs(y, p)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), found {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, found {n_resamples}")
    p_neg, p_pos = p[y == 0], p[y == 1]
    if len(p_neg) < 2 or len(p_pos) < 2:
        warnings.warn(
            f"bootstrap needs >= 2 images of each class, found {len(p_neg)} NORMAL and {len(p_pos)} "
            "PNEUMONIA; confidence intervals are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return {k: (float("nan"), float("nan")) for k in CI_METRICS}
    with warnings.catch_warnings():
        # A metric that is identical in every resample (e.g. specificity 1.0) is a degenerate
        # distribution; scipy warns, and the interval (v, v) it returns is the honest answer.
        warnings.simplefilter("ignore", category=scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(
            (p_neg, p_pos),
            _resample_statistic(threshold),
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            paired=False,
            rng=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    return {k: (float(lo), float(hi)) for k, lo, hi in zip(CI_METRICS, low, high)}


def evaluate_predictions(
    y,
    p,
    threshold: float,
    *,
    default_threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Test-set report: metrics at the validation-chosen ``threshold`` and at ``default_threshold``.

    Returns a JSON-ready dict (the layout of metrics/eval/<model>.json)::

        {"n": .., "n_normal": .., "n_pneumonia": .., "confidence": 0.95, "n_resamples": ..,
         "at_val_threshold": {"threshold": t, "tp": .., "fp": .., "tn": .., "fn": ..,
                              "accuracy": {"value": .., "ci_low": .., "ci_high": ..}, ...},
         "at_default_threshold": {...same, at 0.5...}}
    """
    y, p = _check_inputs(y, p)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_normal": int((y == 0).sum()),
        "n_pneumonia": int((y == 1).sum()),
        "confidence": float(confidence),
        "n_resamples": int(n_resamples),
    }
    for key, t in (("at_val_threshold", threshold), ("at_default_threshold", default_threshold)):
        point = binary_metrics(y, p, t)
        ci = bootstrap_ci(y, p, t, n_resamples=n_resamples, seed=seed, confidence=confidence)
        block = {"threshold": float(t), **{k: point[k] for k in COUNT_KEYS}}
        for k in CI_METRICS:
            block[k] = {"value": point[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
        out[key] = block
    return out


# --------------------------------------------------------------------------------------------
# Curves (for DVC plot files and figures)
# --------------------------------------------------------------------------------------------


def roc_points(y, p) -> dict[str, np.ndarray]:
    """ROC curve: {"fpr", "tpr", "threshold"} (sklearn; the first threshold, +inf, is clipped to 1)."""
    y, p = _check_inputs(y, p)
    fpr, tpr, thr = roc_curve(y, p)
    return {"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)}


def pr_points(y, p) -> dict[str, np.ndarray]:
    """Precision-recall curve: {"recall", "precision", "threshold"} ordered by increasing recall."""
    y, p = _check_inputs(y, p)
    precision, recall, thr = precision_recall_curve(y, p)
    # sklearn returns decreasing recall and one threshold fewer than points; the last point
    # (recall 0, precision 1) has no threshold, so it gets 1.0.
    thr = np.r_[thr, 1.0]
    return {"recall": recall[::-1], "precision": precision[::-1], "threshold": thr[::-1]}


def calibration_points(y, p, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Reliability diagram: {"mean_predicted", "fraction_positive", "count"} per non-empty bin."""
    y, p = _check_inputs(y, p)
    # One binning for all three columns (and the ECE): sklearn's calibration_curve puts a
    # probability exactly on a bin edge in the other bin, which misaligned the count column.
    idx = _bin_index(p, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    keep = counts > 0
    mean_pred = np.bincount(idx, weights=p, minlength=n_bins)[keep] / counts[keep]
    frac_pos = np.bincount(idx, weights=y, minlength=n_bins)[keep] / counts[keep]
    return {"mean_predicted": mean_pred, "fraction_positive": frac_pos, "count": counts[keep]}
