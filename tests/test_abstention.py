"""The refer band (cxr.abstention): class-conditional split-conformal ends, chosen on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from cxr.abstention import REFER_CODE, band_at, choose_refer_band, conformal_ends, decide, selective


def scores(n=400, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    return y, expit(rng.normal(0, 1.5, n) + sep * (2 * y - 1))


def test_conformal_ends_are_the_class_quantiles_with_the_finite_sample_correction():
    y = np.array([0] * 19 + [1] * 9)
    p = np.r_[np.arange(1, 20) / 100, np.arange(1, 10) / 10]  # NORMAL 0.01..0.19, PNEUMONIA 0.1..0.9
    a, b = conformal_ends(y, p, 0.1)
    assert a == pytest.approx(0.1)  # floor(10 * 0.1) = 1st smallest PNEUMONIA
    assert b == pytest.approx(0.18)  # ceil(20 * 0.9) = 18th smallest NORMAL
    assert conformal_ends(y, p, 0.01) == (0.0, 1.0)  # too few images to certify 1 %: nothing excluded


def test_decisions_and_the_band_around_the_threshold():
    p = np.array([0.1, 0.3, 0.5, 0.69, 0.7, 0.9])
    np.testing.assert_array_equal(decide(p, 0.5, None), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(decide(p, 0.5, (0.3, 0.7)), [0, REFER_CODE, REFER_CODE, REFER_CODE, 1, 1])
    s = selective([0, 1, 0, 1, 1, 0], p, 0.5, (0.3, 0.7))
    assert (s["n_decided"], s["n_refer"], s["n_errors"]) == (3, 3, 1)  # 0.9 called PNEUMONIA, a NORMAL
    assert s["coverage"] == 0.5 and s["error_among_decided"] == pytest.approx(1 / 3)
    assert math.isnan(selective([0], [0.5], 0.5, (0.0, 1.0))["error_among_decided"])
    y, q = scores()
    low, high = band_at(y, q, 0.5, 0.05)
    assert low <= 0.5 <= high  # the band holds the threshold: a decided image keeps its label


def test_chosen_band_meets_the_target_on_validation_and_holds_on_new_images():
    y, p = scores(n=600, sep=1.2, seed=1)
    rec = choose_refer_band(y, p, 0.5, 0.05)
    assert rec["val_error_among_decided"] <= 0.05 and rec["alpha"] <= 0.05
    assert 0 < rec["val_coverage"] < 1 and rec["low"] < rec["high"]
    no_band = selective(y, p, 0.5, None)
    assert no_band["error_among_decided"] > 0.05  # the threshold alone misses the target
    y2, p2 = scores(n=4000, sep=1.2, seed=2)  # a fresh draw of the same population
    s = selective(y2, p2, 0.5, (rec["low"], rec["high"]))
    assert s["error_among_decided"] < 0.07
    for c in (0, 1):  # the class-conditional guarantee: at most alpha of each class decided wrongly (+ noise)
        d = decide(p2[y2 == c], 0.5, (rec["low"], rec["high"]))
        assert np.mean(d == 1 - c) < rec["alpha"] + 0.02


def test_separable_validation_needs_no_band():
    y = np.array([0] * 30 + [1] * 30)
    p = np.r_[np.linspace(0.01, 0.3, 30), np.linspace(0.7, 0.99, 30)]
    rec = choose_refer_band(y, p, 0.5, 0.05)
    assert rec["val_coverage"] == 1.0 and rec["val_error_among_decided"] == 0.0
    assert rec["low"] <= 0.5 <= rec["high"]
    with pytest.raises(ValueError, match="both classes"):
        choose_refer_band([1, 1], [0.4, 0.6], 0.5, 0.05)
