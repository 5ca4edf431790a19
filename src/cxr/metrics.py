"""Classification metrics for NORMAL (0) vs PNEUMONIA (1), computed with scikit-learn and scipy.

Positive class = PNEUMONIA. Probabilities are P(pneumonia).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

THRESHOLD_METHODS = ("youden", "fixed")


def choose_threshold(y_true, y_prob, method: str = "youden", default: float = 0.5) -> float:
    """Decision threshold from *validation* predictions.

    ``youden`` maximises Youden's J = sensitivity + specificity - 1 on the ROC curve; ``fixed``
    returns ``default``. With a single class present no ROC exists, so ``default`` is returned.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; expected one of {list(THRESHOLD_METHODS)}")
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    if method == "fixed" or len(np.unique(y_true)) < 2:
        return float(default)
    fpr, tpr, thr = roc_curve(y_true, y_prob)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # thr[0] is +inf (nothing predicted positive)
    return float(np.clip(thr[best], 0.0, 1.0))
