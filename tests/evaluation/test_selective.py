"""Calibration and refer-band reports, figures and compare's tables (cxr.evaluation.selective)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from cxr.abstention import choose_refer_band
from cxr.calibration import apply_temperature, fit_temperature
from cxr.config import EvaluateConfig
from cxr.evaluation import selective as S
from cxr.evaluation.evaluate import evaluate_probabilities
from toydata import card_for


def data(n, seed, sharp=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < expit(z)).astype(int)
    return y, expit(sharp * z)  # over-confident raw probabilities


def test_calibration_report_before_and_after():
    y, raw = data(500, 0)
    t = fit_temperature(y, raw)
    rep = S.calibration_report(y, raw, t)
    assert rep["temperature"] == t and rep["calibrated"]["ece"] < rep["uncalibrated"]["ece"]
    assert rep["calibrated"]["brier"] < rep["uncalibrated"]["brier"]
    same = S.calibration_report(y, raw, 1.0)
    assert same["calibrated"] == same["uncalibrated"]


def test_refer_report_counts_and_cis():
    y, raw = data(300, 1)
    band = (0.3, 0.7)
    rep = S.refer_report(y, raw, 0.5, band, EvaluateConfig(n_resamples=200))
    assert rep["n_decided"] + rep["n_refer"] == rep["n"] == 300
    for k in ("coverage", "error_among_decided"):
        assert rep[k]["ci_low"] <= rep[k]["value"] <= rep[k]["ci_high"]
    assert rep["coverage"]["value"] == rep["n_decided"] / 300


def test_evaluate_reports_both_and_compare_tables_them():
    from cxr.models import build_model

    yv, rv = data(400, 2)
    t = fit_temperature(yv, rv)
    pv = apply_temperature(rv, t)
    refer = choose_refer_band(yv, pv, 0.5, 0.05)
    band = (refer["low"], refer["high"])
    card = card_for(build_model("cnn", image_size=16), temperature=t, refer_band=band, refer=refer)
    y, raw = data(200, 3)
    cfg = EvaluateConfig(n_resamples=50)
    res = evaluate_probabilities(
        "cnn", 0.5, "youden", y, card.calibrate(raw), [f"{i}" for i in range(200)], cfg, card=card, raw_probs=raw
    )
    rep = res.report
    assert rep["calibration"]["temperature"] == t and rep["refer"]["target_error"] == 0.05
    rep["external"] = {"site_b": rep | {"external": {}}}
    md = "\n".join(S.calibration_markdown({"cnn": rep}, 5) + S.refer_markdown({"cnn": rep}, 6))
    assert "**Table 5. Calibration: ECE and Brier before/after temperature scaling.**" in md
    assert f"| cnn | {t:.2f} | internal test |" in md and f"| cnn | {t:.2f} | site_b |" in md
    assert "**Table 6. Refer band.**" in md and "at most 5 %" in md and "| site_b |" in md


def test_figures_draw_both_curves_and_every_set():
    y, raw = data(300, 4)
    t = fit_temperature(y, raw)
    fig = S.reliability_figure(y, raw, apply_temperature(raw, t), temperature=t, label="cnn", title="x")
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert any("before scaling" in s for s in labels) and any(f"T = {t:.2f}" in s for s in labels)
    dashed = [line for line in fig.axes[0].lines if "before" in line.get_label()]
    assert dashed[0].get_linestyle() == "--"
    # the second curve (sklearn's CalibrationDisplay) leaves the figure's axis labels as they were
    assert fig.axes[0].get_ylabel() == "Observed fraction PNEUMONIA" and fig.axes[0].get_xlabel() == ""
    assert fig.axes[1].get_xlabel() == "Mean predicted P(pneumonia)"
    yv, pv = data(300, 5)
    refer = choose_refer_band(yv, pv, 0.5, 0.05)
    fig = S.refer_figure((yv, pv), {"internal test": (y, raw), "site_b": (y[:100], raw[:100])}, 0.5, refer, title="r")
    names = [line.get_label() for line in fig.axes[0].lines]
    assert {"validation", "internal test", "site_b", "target (validation)"} <= set(names)


@pytest.mark.parametrize("temperature", [1.0])
def test_reliability_figure_without_a_temperature_has_one_curve(temperature):
    y, raw = data(100, 6)
    fig = S.reliability_figure(y, raw, raw, temperature=temperature, label="cnn", title="x")
    assert not any("before" in line.get_label() for line in fig.axes[0].lines)


def test_the_report_says_why_a_model_has_no_refer_band():
    from cxr.evaluation.selective import refer_markdown

    y = np.r_[np.zeros(19, int), np.ones(43, int)]
    record = choose_refer_band(y, np.r_[np.linspace(0, 0.4, 19), np.linspace(0.5, 1, 43)], 0.45, 0.05)
    md = "\n".join(refer_markdown({"cnn": {"refer": record}}, 7))
    assert "| cnn | no refer band (validation too small for a 5 % target: 19 NORMAL and 43 PNEUMONIA images, " in md
    assert "with 95 % confidence over the validation draw" in md and "0.450-0.450" not in md
    assert (
        "both classes at once (and so an error among decided images of at most 5 % / coverage) with at least 90 %" in md
    )
