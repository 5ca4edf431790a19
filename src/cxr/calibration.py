"""Temperature scaling: one scalar T, fitted on the validation split, that makes P(pneumonia) mean what it says.

    t = fit_temperature(val_labels, val_probs)           # argmin over T of the validation NLL of sigmoid(logit / T)
    record = decide_temperature("auto", val_labels, val_probs)   # what train stores in the model card
    apply_temperature(probs, record["temperature"])       # the one definition: evaluate, predict and serving

Guo et al. 2017 ("On calibration of modern neural networks"): dividing the logit by T > 1 softens an
over-confident model, T < 1 sharpens an under-confident one. The map is strictly increasing, so the
ranking of images, the ROC curve and ROC-AUC are unchanged, and a threshold chosen by Youden's J or the
logit midpoint on calibrated validation probabilities is the image of the one chosen on raw ones (the
same images are called PNEUMONIA). Only the probabilities' values change: Brier score, ECE, a fixed
threshold such as 0.5, and what a user reads. torch-free (numpy and scipy): the model card applies it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The search interval of T (on log T): a model beyond these needs more than one scalar.
T_BOUNDS = (0.05, 20.0)
# calibrate: auto keeps the fitted T only when it lowers the validation NLL by more than this (nats per image).
AUTO_TOLERANCE = 1e-3
# The probabilities come from a float32 sigmoid, which reaches 1.0 at a logit of about 16.6: clipped
# there (and symmetrically near 0), the logit recovered from a probability is the float32 one.
_EPS = 2.0**-24


def logit(probs) -> np.ndarray:
    """log(p / (1 - p)), the probabilities clipped to [2^-24, 1 - 2^-24] (float32 sigmoid's saturation)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): the calibrated P(pneumonia). T == 1 returns the probabilities unchanged (a copy)."""
    probs = np.asarray(probs, dtype=np.float64)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, found {temperature}")
    if temperature == 1.0:
        return probs.copy()
    z = logit(probs) / temperature
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out


def nll(labels, probs, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats per image) of ``labels`` under sigmoid(logit(p) / T)."""
    y = np.asarray(labels, dtype=np.float64)
    z = logit(probs) / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y * z))  # softplus(z) - y z, stable for any z


def fit_temperature(labels, probs, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T in ``bounds`` minimising the validation NLL of sigmoid(logit(p) / T), searched on log T
    (``scipy.optimize.minimize_scalar``, bounded). 1.0 when there is nothing to fit (no images, one class:
    a single class is fitted best by an infinitely confident model, which no one should ship)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda s: nll(y, probs, math.exp(s)), bounds=(lo, hi), method="bounded")
    return float(math.exp(float(res.x)))


def decide_temperature(mode: str, labels, probs, tolerance: float = AUTO_TOLERANCE) -> dict[str, Any]:
    """What ``train.calibrate`` = ``mode`` (auto | true | false) makes of the validation probabilities.

    ``true`` applies the fitted T; ``false`` fits nothing; ``auto`` fits T and keeps it when it lowers the
    validation NLL by more than ``tolerance`` nats per image (it never raises it: T = 1 is in the search
    interval) and is not at a bound of :data:`T_BOUNDS`, else T = 1. Returns the model card's record: mode,
    temperature (the one applied; 1.0 = none), fitted_temperature (None when nothing was fitted), applied,
    at_bound (when fitted), val_nll_before, val_nll_after.
    """
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"calibrate: expected auto, true or false, found {mode!r}")
    before = nll(labels, probs) if len(np.asarray(labels)) else float("nan")
    record: dict[str, Any] = {
        "mode": mode,
        "temperature": 1.0,
        "fitted_temperature": None,
        "applied": False,
        "val_nll_before": before,
        "val_nll_after": before,
    }
    if mode == "false":
        return record
    t = fit_temperature(labels, probs)
    after = nll(labels, probs, t)
    # At a bound of the search the split does not pin T down (a split the model separates: the NLL keeps
    # falling as T -> 0, towards probabilities of 0 and 1): auto does not ship that.
    at_bound = not T_BOUNDS[0] * 1.01 < t < T_BOUNDS[1] / 1.01
    keep = mode == "true" or (before - after > tolerance and not at_bound)
    record.update(fitted_temperature=t, applied=bool(keep), at_bound=at_bound)
    if keep:
        record.update(temperature=t, val_nll_after=after)
    return record
