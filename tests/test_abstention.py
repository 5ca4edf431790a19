"""The refer band (cxr.abstention): class-conditional split-conformal ends, chosen on validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from cxr.abstention import (
    REFER_CODE,
    STATUS_TOO_SMALL,
    band_at,
    choose_refer_band,
    conformal_ends,
    decide,
    describe_refer,
    needed_images,
    selective,
    tolerance_rank,
)


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
    y = np.array([0] * 60 + [1] * 60)
    p = np.r_[np.linspace(0.01, 0.3, 60), np.linspace(0.7, 0.99, 60)]
    rec = choose_refer_band(y, p, 0.5, 0.05)
    assert rec["val_coverage"] == 1.0 and rec["val_error_among_decided"] == 0.0
    assert rec["low"] <= 0.5 <= rec["high"]
    with pytest.raises(ValueError, match="both classes"):
        choose_refer_band([1, 1], [0.4, 0.6], 0.5, 0.05)


def test_the_ranks_hold_with_the_confidence_over_validation_draws_not_only_on_average():
    # The share of new scores below the j-th smallest of n is Beta(j, n + 1 - j): simulate validation draws of
    # n = 100 uniform scores and count the draws whose end lets more than alpha of new scores through.
    rng = np.random.default_rng(0)
    n, alpha = 100, 0.05
    draws = np.sort(rng.random((4000, n)), axis=1)  # a uniform score's cdf is itself: the share below = the value
    pac, mean = tolerance_rank(n, alpha, 0.95), tolerance_rank(n, alpha, None)
    # P(Beta(2, 99) <= 0.05) = P(Binomial(100, 0.05) >= 2) = 0.963 >= 0.95; at rank 3: 0.882
    assert (pac, mean) == (2, 5)
    miss_pac = np.mean(draws[:, pac - 1] > alpha)
    miss_mean = np.mean(draws[:, mean - 1] > alpha)
    assert miss_pac <= 0.05 < 0.3 < miss_mean  # in expectation only: the level is exceeded in about half the draws
    assert needed_images(0.05, 0.95) == 59 and needed_images(0.05, None) == 19
    assert tolerance_rank(58, 0.05, 0.95) == 0 and tolerance_rank(59, 0.05, 0.95) == 1


def test_a_class_too_small_for_the_target_gets_no_band_and_says_so():
    y = np.array([0] * 19 + [1] * 43)  # the default run's validation split
    p = np.r_[np.linspace(0.01, 0.45, 19), np.linspace(0.4, 0.99, 43)]
    rec = choose_refer_band(y, p, 0.5, 0.05)
    assert rec["status"] == STATUS_TOO_SMALL and rec["needs"] == 59 and "low" not in rec
    assert (rec["n_normal"], rec["n_pneumonia"]) == (19, 43)
    assert describe_refer(rec) == (
        "no refer band (validation too small for a 5 % target: 19 NORMAL and 43 PNEUMONIA images, "
        "at least 59 of each needed)"
    )
    plain = choose_refer_band(y, p, 0.5, 0.05, confidence=None)  # in expectation: 19 images are enough
    assert "low" in plain and "in expectation" in plain["method"]
    assert "in expectation over validation draws" in describe_refer(plain)


def test_the_stated_guarantee_is_per_class_and_both_classes_at_once_hold_with_less():
    # Each end holds with the confidence on its own; both at once (what "error among decided <= alpha / coverage"
    # needs) only with the product of the two, here 0.9515^2 = 0.905 < 95 % at the fewest images (59 of each).
    from scipy.stats import beta

    one = beta.cdf(0.05, 1, 59)  # rank 1 of 59: the one-sided level reached, just above 95 %
    assert 0.95 <= one < 0.952 and one**2 < 0.95
    y, p = scores(800, sep=1.0)
    rec = choose_refer_band(y, p, 0.5, 0.05)
    assert "low" in rec
    text = describe_refer(rec)
    assert "at most 5 % of each class decided wrongly, each class with 95 % confidence over the validation draw" in text
    assert "both at once with at least 90 %" in text
