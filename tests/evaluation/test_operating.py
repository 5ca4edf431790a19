"""Operating points: thresholds set on validation to meet a sensitivity or specificity, scored elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.config import ConfigError, EvaluateConfig, OperatingTarget, parse
from cxr.evaluation.compare import results_table
from cxr.evaluation.evaluate import evaluate_probabilities
from cxr.evaluation.operating import choose_thresholds, score_operating_points
from cxr.evaluation.report import results_markdown

# Validation: 4 PNEUMONIA (0.9, 0.8, 0.7, 0.3) and 4 NORMAL (0.6, 0.4, 0.2, 0.1).
VAL_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
VAL_P = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1])
SENS_75 = OperatingTarget(metric="sensitivity", target=0.75)
SPEC_75 = OperatingTarget(metric="specificity", target=0.75)


def test_without_a_confidence_the_thresholds_are_the_edge_that_meets_the_target_on_validation():
    sens, spec = choose_thresholds(VAL_Y, VAL_P, [SENS_75, SPEC_75], confidence=None)
    # 3 of 4 positives: the highest threshold doing it is the third positive's score, 0.7.
    assert sens.threshold == 0.7 and sens.val_sensitivity == 0.75 and sens.val_specificity == 1.0
    # 3 of 4 negatives below it: just above the second-highest negative, 0.4 (0.6 is then called PNEUMONIA).
    assert spec.threshold == np.nextafter(0.4, 1) and spec.val_specificity == 0.75 and spec.val_sensitivity == 0.75
    # A target of 100 % sensitivity goes down to the lowest positive; of 100 % specificity above every negative.
    (all_pos,) = choose_thresholds(VAL_Y, VAL_P, [OperatingTarget(metric="sensitivity", target=0.999)], None)
    assert all_pos.threshold == 0.3 and all_pos.val_sensitivity == 1.0
    (no_fp,) = choose_thresholds(VAL_Y, VAL_P, [OperatingTarget(metric="specificity", target=0.999)], None)
    assert no_fp.threshold == np.nextafter(0.6, 1) and no_fp.val_specificity == 1.0


def test_the_threshold_holds_with_the_confidence_for_new_images_or_is_refused():
    # 4 + 4 validation images cannot support a 75 % target at 95 % confidence (it needs 11: 1 - 0.25^n >= 0.95)
    sens, spec = choose_thresholds(VAL_Y, VAL_P, [SENS_75, SPEC_75])
    assert sens.threshold is None and (sens.n, sens.needs) == (4, 11) and spec.threshold is None
    sens95, spec95 = choose_thresholds(
        VAL_Y,
        VAL_P,
        [
            SENS_95 := OperatingTarget(metric="sensitivity", target=0.95),
            OperatingTarget(metric="specificity", target=0.95),
        ],
    )
    assert sens95.threshold is None and sens95.shortfall() == "needs at least 59 PNEUMONIA images (validation has 4)"
    assert spec95.threshold is None and spec95.name == "specificity-95"
    # Many validation draws of one population: at the chosen threshold the population's sensitivity (here known:
    # PNEUMONIA scores uniform on (0, 1), so sensitivity = 1 - threshold) is >= 95 % in >= 95 % of the draws; the
    # edge of the validation range (the rule before) falls short in about half of them.
    rng = np.random.default_rng(0)
    held, edge_held = [], []
    for _ in range(300):
        y = np.r_[np.zeros(100, int), np.ones(200, int)]
        p = np.r_[rng.random(100) * 0.5, rng.random(200)]
        (pt,) = choose_thresholds(y, p, [SENS_95])
        (edge,) = choose_thresholds(y, p, [SENS_95], confidence=None)
        held.append(1 - pt.threshold >= 0.95)
        edge_held.append(1 - edge.threshold >= 0.95)
    assert np.mean(held) >= 0.93 and np.mean(edge_held) < 0.7


def test_one_class_in_validation_is_a_clear_error():
    with pytest.raises(ValueError, match="both classes"):
        choose_thresholds(np.ones(4), np.linspace(0, 1, 4), [SENS_75])


def test_test_set_is_scored_at_the_validation_threshold_with_cis():
    points = choose_thresholds(VAL_Y, VAL_P, [SENS_75], confidence=None)
    # Another site: positives score lower, so the validation threshold (0.7) misses 4 of 10.
    y = np.array([1] * 10 + [0] * 10)
    p = np.r_[np.linspace(0.5, 0.95, 10), np.linspace(0.0, 0.45, 10)]
    (row,) = score_operating_points(y, p, points, EvaluateConfig(n_resamples=200))
    assert row["threshold"] == 0.7 and row["metric"] == "sensitivity"
    assert row["sensitivity"]["value"] == pytest.approx(0.6) and row["specificity"]["value"] == 1.0
    assert row["sensitivity"]["ci_low"] < 0.6 < row["sensitivity"]["ci_high"]
    assert row["target_met"] is False


def test_the_report_and_the_results_section_carry_them():
    cfg = EvaluateConfig(n_resamples=100)
    y = np.array([1] * 10 + [0] * 10)
    p = np.r_[np.linspace(0.75, 0.95, 10), np.linspace(0.0, 0.45, 10)]
    points = choose_thresholds(VAL_Y, VAL_P, [SENS_75, SPEC_75], confidence=None)
    result = evaluate_probabilities("cnn", 0.5, "youden", y, p, [f"{i}.png" for i in range(20)], cfg, operating=points)
    report = result.report
    assert [r["metric"] for r in report["operating_points"]] == ["sensitivity", "specificity"]
    assert all(r["target_met"] for r in report["operating_points"])
    train = {"cnn": {"val_auc": 0.9, "val_loss": 0.3}}
    md = results_markdown(results_table({"cnn": report}, train, "val_auc"), eval_metrics={"cnn": report})
    assert "Operating points" in md
    assert "| cnn | sensitivity 75 % | 0.700 | internal test | 100.0 (" in md


def test_operating_points_params_are_checked():
    cfg = parse(EvaluateConfig, {"operating_points": [{"metric": "specificity", "target": 0.9}]}, "evaluate")
    assert cfg.operating_points == [OperatingTarget(metric="specificity", target=0.9)]
    with pytest.raises(
        ConfigError,
        match=r"evaluate\.operating_points\[0\]\.metric: expected 'sensitivity' or 'specificity', found 'ppv'",
    ):
        parse(EvaluateConfig, {"operating_points": [{"metric": "ppv", "target": 0.9}]}, "evaluate")
    with pytest.raises(ConfigError, match="target"):
        parse(EvaluateConfig, {"operating_points": [{"metric": "sensitivity", "target": 1.5}]}, "evaluate")


def test_a_target_validation_cannot_support_is_reported_as_such_not_as_a_threshold():
    y = np.r_[np.zeros(19, int), np.ones(43, int)]  # the default run's validation split
    p = np.r_[np.linspace(0.0, 0.4, 19), np.linspace(0.5, 1.0, 43)]
    points = choose_thresholds(y, p, [OperatingTarget(metric="specificity", target=0.95)])
    cfg = EvaluateConfig(n_resamples=50)
    report = evaluate_probabilities("cnn", 0.5, "youden", y, p, [f"{i}.png" for i in range(62)], cfg, operating=points)
    (row,) = report.report["operating_points"]
    assert row["threshold"] is None and row["target_met"] is None and "sensitivity" not in row
    from cxr.evaluation.evaluate import _test_figures

    assert "roc" in _test_figures(report, None)  # the ROC figure marks the points that have a threshold only
    from cxr.evaluation.operating import operating_points_markdown

    md = "\n".join(operating_points_markdown({"cnn": report.report}, 5))
    assert "| cnn | specificity 95 % | none: needs at least 59 NORMAL images (validation has 19) | every set |" in md
    assert "lower confidence bound" in md
