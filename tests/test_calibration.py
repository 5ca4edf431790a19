"""Temperature scaling (cxr.calibration): fitted on validation, monotone, the identity at T = 1."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from cxr.calibration import apply_temperature, decide_temperature, fit_temperature, logit, nll
from cxr.metrics import binary_metrics, choose_threshold


def overconfident(n=2000, true_t=3.0, seed=0):
    """Labels drawn from sigmoid(z), probabilities reported as sigmoid(z * true_t): T = true_t undoes it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < expit(z)).astype(int)
    return y, expit(z * true_t)


def test_identity_at_one_and_monotone():
    p = np.array([0.0, 1e-9, 0.2, 0.5, 0.8, 1.0])
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)
    q = apply_temperature(p, 2.5)
    assert np.all(np.diff(q) >= 0) and q[3] == pytest.approx(0.5)
    np.testing.assert_allclose(apply_temperature(np.array([0.8]), 2.0), [2 / 3])  # sqrt(4) / (1 + sqrt(4))
    np.testing.assert_allclose(logit(apply_temperature(np.array([0.1, 0.7]), 0.5)), 2 * logit([0.1, 0.7]))
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


def test_fit_recovers_the_temperature_of_an_overconfident_model():
    y, p = overconfident(true_t=3.0)
    t = fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.15)
    assert nll(y, p, t) < nll(y, p) and nll(y, p, t) <= nll(y, p, 1.0)
    before, after = binary_metrics(y, p), binary_metrics(y, apply_temperature(p, t))
    assert after["ece"] < before["ece"] / 2 and after["brier"] < before["brier"]
    assert after["roc_auc"] == pytest.approx(before["roc_auc"])  # monotone: the ranking is kept


def test_nothing_to_fit_on_one_class():
    assert fit_temperature([1, 1, 1], [0.6, 0.7, 0.9]) == 1.0
    assert fit_temperature([], []) == 1.0


def test_decide_auto_keeps_a_real_gain_and_drops_a_negligible_one():
    y, p = overconfident(true_t=3.0)
    auto = decide_temperature("auto", y, p)
    assert auto["applied"] and auto["temperature"] == auto["fitted_temperature"] > 2
    assert auto["val_nll_after"] < auto["val_nll_before"]
    y1, p1 = overconfident(true_t=1.0, seed=1)  # already calibrated: the fitted T gains nothing worth keeping
    kept = decide_temperature("auto", y1, p1)
    assert not kept["applied"] and kept["temperature"] == 1.0 and kept["fitted_temperature"] is not None
    forced = decide_temperature("true", y1, p1)
    assert forced["applied"] and forced["temperature"] == forced["fitted_temperature"]
    off = decide_temperature("false", y, p)
    assert off == {**off, "temperature": 1.0, "applied": False, "fitted_temperature": None}
    y2 = np.array([0] * 20 + [1] * 20)  # separated: the NLL falls as T -> 0; auto does not ship the bound
    p2 = np.r_[np.linspace(0.05, 0.4, 20), np.linspace(0.6, 0.95, 20)]
    sep = decide_temperature("auto", y2, p2)
    assert sep["at_bound"] and not sep["applied"] and sep["temperature"] == 1.0
    with pytest.raises(ValueError, match="auto, true or false"):
        decide_temperature("maybe", y, p)


@pytest.mark.parametrize("method", ["youden", "midpoint"])
def test_threshold_chosen_on_calibrated_probabilities_makes_the_same_calls(method):
    """Youden's J and the logit midpoint commute with temperature scaling: the same images are PNEUMONIA."""
    y, p = overconfident(n=300, true_t=2.0, seed=3)
    t_raw = choose_threshold(y, p, method)
    q = apply_temperature(p, 2.0)
    t_cal = choose_threshold(y, q, method)
    np.testing.assert_array_equal(p >= t_raw, q >= t_cal)
