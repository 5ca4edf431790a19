"""Metrics against hand-checked cases; bootstrap CIs against the point estimates."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cxr import metrics as M

Y4 = np.array([0, 0, 1, 1])
P4 = np.array([0.1, 0.6, 0.4, 0.9])


def _scores(n_neg, n_pos, seed=0, decimals=2):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    p = np.where(y == 1, rng.beta(5, 2, len(y)), rng.beta(2, 5, len(y)))
    return y, p.round(decimals)  # rounding makes ties, as real predictions have


def test_binary_metrics_hand_checked_at_half():
    m = M.binary_metrics(Y4, P4, 0.5)
    # predictions [0, 1, 0, 1]: one of each outcome
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1"):
        assert m[k] == pytest.approx(0.5), k
    assert m["roc_auc"] == pytest.approx(3 / 4)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.6 + 0.1) / 4)  # one image per bin
    assert m["threshold"] == 0.5


def test_binary_metrics_threshold_is_inclusive_and_moves_counts():
    m = M.binary_metrics(Y4, P4, 0.4)  # p >= 0.4 is PNEUMONIA: predictions [0, 1, 1, 1]
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_always_pneumonia_scores_prevalence_but_zero_specificity():
    y = np.r_[np.zeros(234, int), np.ones(390, int)]
    m = M.binary_metrics(y, np.full(len(y), 0.9), 0.5)
    assert m["accuracy"] == pytest.approx(390 / 624)
    assert m["specificity"] == 0.0 and m["balanced_accuracy"] == 0.5


def test_ece_counts_only_the_miscalibrated_bin():
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.95, 0.95])  # the 0.5 bin is calibrated (2 of 4); the 0.95 bin is off by 0.05
    assert M.expected_calibration_error(y, p) == pytest.approx((2 / 6) * 0.05)


def test_input_errors_are_actionable():
    with pytest.raises(ValueError, match="sigmoid"):
        M.binary_metrics(Y4, np.array([-2.0, 0.1, 3.0, 0.5]))
    with pytest.raises(ValueError, match="equal length"):
        M.binary_metrics(Y4, P4[:3])
    with pytest.raises(ValueError, match="0 \\(NORMAL\\) or 1"):
        M.binary_metrics(np.array([0, 2, 1, 1]), P4)


def test_choose_threshold_youden_and_fixed():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    assert M.choose_threshold(y, p, "youden") == pytest.approx(0.35)  # separates perfectly
    assert M.choose_threshold(y, p, "fixed", default=0.7) == 0.7
    with pytest.raises(ValueError, match="youden"):
        M.choose_threshold(y, p, "otsu")


def test_choose_threshold_midpoint_between_class_medians():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    logit = np.log(p / (1 - p))
    expected = 1 / (1 + np.exp(-(np.median(logit[:3]) + np.median(logit[3:])) / 2))
    t = M.choose_threshold(y, p, "midpoint")
    assert t == pytest.approx(expected) and 0.35 < t < 0.8  # a margin above Youden's edge at 0.35
    # prevalence-free: ten times the positives with the same distribution, the same threshold
    assert M.choose_threshold(np.r_[y[:3], np.repeat(y[3:], 10)], np.r_[p[:3], np.repeat(p[3:], 10)], "midpoint") == (
        pytest.approx(t)
    )
    # outliers do not move it (medians), and saturated probabilities stay finite
    assert M.choose_threshold(y, np.array([0.1, 0.2, 1.0, 0.0, 0.8, 0.9]), "midpoint") == pytest.approx(t)
    assert M.choose_threshold(np.array([1, 1]), np.array([0.2, 0.9]), "midpoint", default=0.4) == 0.4


def test_vectorised_statistic_equals_sklearn_point_estimates():
    y, p = _scores(40, 70, seed=3)
    for t in (0.3, 0.5, 0.71):
        point = M.binary_metrics(y, p, t)
        stat = M._resample_statistic(t)(p[y == 0], p[y == 1])
        for k, v in zip(M.CI_METRICS, stat):
            assert v == pytest.approx(point[k], abs=1e-12), (k, t)


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_more_data():
    y, p = _scores(60, 100, seed=1)
    small = M.bootstrap_ci(y, p, 0.5, n_resamples=400, seed=0)
    point = M.binary_metrics(y, p, 0.5)
    for k in M.CI_METRICS:
        lo, hi = small[k]
        assert lo <= point[k] <= hi, k
        assert lo < hi, k
    y_big, p_big = _scores(1200, 2000, seed=1)
    big = M.bootstrap_ci(y_big, p_big, 0.5, n_resamples=400, seed=0)
    for k in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert big[k][1] - big[k][0] < 0.6 * (small[k][1] - small[k][0]), k


def test_bootstrap_ci_is_reproducible_and_seed_dependent():
    y, p = _scores(30, 50)
    a = M.bootstrap_ci(y, p, 0.5, n_resamples=200, seed=7)
    assert a == M.bootstrap_ci(y, p, 0.5, n_resamples=200, seed=7)
    assert a != M.bootstrap_ci(y, p, 0.5, n_resamples=200, seed=8)


def test_bootstrap_is_stratified():
    # 3 PNEUMONIA images among 60: unstratified resampling would often draw none, making
    # sensitivity undefined; stratified resampling keeps 3 in every resample, all detected.
    y = np.r_[np.zeros(57, int), np.ones(3, int)]
    p = np.r_[np.linspace(0.0, 0.6, 57), [0.9, 0.95, 0.99]]
    ci = M.bootstrap_ci(y, p, 0.5, n_resamples=300, seed=0)
    assert ci["sensitivity"] == (1.0, 1.0)
    assert ci["roc_auc"] == (1.0, 1.0)
    assert np.isfinite(ci["precision"]).all()


def test_bootstrap_with_a_missing_class_warns_and_returns_nan():
    with pytest.warns(RuntimeWarning, match="each class"):
        ci = M.bootstrap_ci(np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.2]), 0.5, n_resamples=10)
    assert np.isnan(ci["accuracy"]).all()


def test_bootstrap_1000_resamples_of_624_images_is_fast():
    y, p = _scores(234, 390)
    start = time.perf_counter()
    M.bootstrap_ci(y, p, 0.5, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 15  # ~1 s on an idle 2-core CPU; loose for shared machines


def test_evaluate_predictions_layout_and_json():
    y, p = _scores(40, 60)
    rep = M.evaluate_predictions(y, p, threshold=0.62, n_resamples=100, seed=0)
    assert (rep["n"], rep["n_normal"], rep["n_pneumonia"]) == (100, 40, 60)
    assert rep["at_val_threshold"]["threshold"] == 0.62
    assert rep["at_default_threshold"]["threshold"] == 0.5
    for key in ("at_val_threshold", "at_default_threshold"):
        block = rep[key]
        assert sum(block[k] for k in M.COUNT_KEYS) == 100
        for k in M.CI_METRICS:
            assert block[k]["ci_low"] <= block[k]["value"] <= block[k]["ci_high"], (key, k)
    # A higher threshold cannot raise sensitivity.
    assert rep["at_val_threshold"]["sensitivity"]["value"] <= rep["at_default_threshold"]["sensitivity"]["value"]
    json.dumps(rep)  # JSON-ready (plain floats and ints)


def test_curve_points():
    y, p = _scores(30, 40)
    roc = M.roc_points(y, p)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1
    assert np.all(np.diff(roc["fpr"]) >= 0) and roc["threshold"].max() <= 1
    pr = M.pr_points(y, p)
    assert len(pr["recall"]) == len(pr["precision"]) == len(pr["threshold"])
    assert np.all(np.diff(pr["recall"]) >= 0) and pr["recall"][-1] == 1
    cal = M.calibration_points(y, p)
    assert cal["count"].sum() == len(y)
    assert len(cal["mean_predicted"]) == len(cal["fraction_positive"]) == len(cal["count"])
    assert np.all((cal["fraction_positive"] >= 0) & (cal["fraction_positive"] <= 1))


def test_calibration_points_with_probabilities_on_bin_edges():
    """0.5 (a logit of exactly 0) sits on a bin edge: every column must use the same bins."""
    cal = M.calibration_points([0, 1, 0, 1], [0.45, 0.5, 0.45, 0.7])
    assert list(cal["count"]) == [2, 1, 1]
    np.testing.assert_allclose(cal["mean_predicted"], [0.45, 0.5, 0.7])
    np.testing.assert_allclose(cal["fraction_positive"], [0.0, 1.0, 1.0])
    assert M.expected_calibration_error([0, 1, 0, 1], [0.45, 0.5, 0.45, 0.7]) == pytest.approx(
        (2 * 0.45 + 0.5 + 0.3) / 4
    )


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_rows_equals_sklearn_row_by_row(ties):
    """The bootstrap's vectorised AP is sklearn's definition, ties included (resampled duplicates are ties)."""
    from sklearn.metrics import average_precision_score

    from cxr.metrics import average_precision_rows

    rng = np.random.default_rng(7)
    for _ in range(100):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        y[0] = 1
        p = rng.choice(rng.random(int(rng.integers(1, 6))), size=(4, n)) if ties else rng.random((4, n))
        expected = [average_precision_score(y, row) for row in p]
        np.testing.assert_allclose(average_precision_rows(p, y), expected, rtol=0, atol=1e-12)


def test_row_is_better_breaks_exact_ties_on_the_other_metric():
    from cxr.metrics import row_is_better

    a, b = {"val_auc": 1.0, "val_loss": 0.2}, {"val_auc": 1.0, "val_loss": 0.1}
    assert row_is_better(b, a, "val_auc") and not row_is_better(a, b, "val_auc")
    assert not row_is_better(a, dict(a), "val_auc")  # a full tie keeps the incumbent
    assert row_is_better({"val_auc": 0.9, "val_loss": 9.0}, {"val_auc": 0.8, "val_loss": 0.1}, "val_auc")
    assert row_is_better({"val_auc": 0.9, "val_loss": 0.1}, {"val_auc": 0.5, "val_loss": 0.1}, "val_loss")
    assert row_is_better(a, None, "val_auc")
    nan = float("nan")
    assert not row_is_better({"val_auc": nan, "val_loss": 0.0}, {"val_auc": nan, "val_loss": 1.0}, "val_auc")
