"""Paired comparisons with the selected model: the statistics on constructed scores, pairing by image path,
the report and its section of reports/results.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cxr.evaluation import paired as P
from toydata import cells, write_predictions


def scores(n: int = 300, seed: int = 0, strengths=(2.0, 1.0)) -> tuple[np.ndarray, ...]:
    """Labels (60 % PNEUMONIA) and one probability vector per strength: the logit is noise + strength x label,
    the same noise for every model (correlated models, as two networks on the same images are)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    noise = rng.normal(size=n)
    own = rng.normal(size=(len(strengths), n))
    return (y, *(1 / (1 + np.exp(-(0.7 * noise + 0.7 * e + s * y))) for s, e in zip(strengths, own)))


def test_identical_scores_differ_by_zero_with_p_one():
    y, a, _ = scores()
    r = P.paired_auc_difference(y, a, a.copy(), n_resamples=200)
    assert r["difference"] == 0 and (r["ci_low"], r["ci_high"]) == (0, 0)
    assert r["p_value"] == 1 and r["p_delong"] == 1
    assert r["roc_auc"] == r["roc_auc_selected"] > 0.8
    assert P.verdict(r["ci_low"], r["ci_high"]) == "indistinguishable"


def test_a_clearly_worse_model_has_a_ci_below_zero_and_a_small_p():
    y, strong, weak = scores(strengths=(2.5, 0.8))
    r = P.paired_auc_difference(y, strong, weak, n_resamples=500, seed=3)
    assert r["difference"] < -0.1 and r["ci_high"] < 0  # weak minus strong
    assert r["p_value"] == pytest.approx(2 / 501)  # no resample on the other side of 0: the floor 2 / (B + 1)
    assert r["p_delong"] < 1e-4
    assert P.verdict(r["ci_low"], r["ci_high"]) == "worse"
    flipped = P.paired_auc_difference(y, weak, strong, n_resamples=500, seed=3)
    assert flipped["difference"] == pytest.approx(-r["difference"]) and flipped["ci_low"] > 0
    assert P.verdict(flipped["ci_low"], flipped["ci_high"]) == "better"


def test_close_models_are_indistinguishable_and_the_p_value_agrees_with_the_ci():
    y, a, b = scores(n=150, strengths=(1.6, 1.5))
    r = P.paired_auc_difference(y, a, b, n_resamples=1000, seed=0)
    assert r["ci_low"] < 0 < r["ci_high"] and r["p_value"] > 0.05
    assert P.verdict(r["ci_low"], r["ci_high"]) == "indistinguishable"
    # The same seed and resamples give the same answer; another seed a close one.
    assert P.paired_auc_difference(y, a, b, n_resamples=1000, seed=0) == r
    other = P.paired_auc_difference(y, a, b, n_resamples=1000, seed=1)
    assert other["ci_low"] == pytest.approx(r["ci_low"], abs=0.02) and other["difference"] == r["difference"]


def _delong_by_definition(y, p_sel, p_oth) -> tuple[float, float]:
    """DeLong et al. 1988, eq. by eq.: the kernel psi over every (PNEUMONIA, NORMAL) pair, O(n^2)."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01, aucs = [], [], []
    for p in (p_oth, p_sel):
        psi = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    s10 = np.cov(np.array(v10))
    s01 = np.cov(np.array(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    return z, 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))


def test_delong_matches_its_definition_with_ties_and_the_bootstrap_spread():
    y, a, b = scores(n=200, strengths=(2.0, 1.4))
    a, b = a.round(2), b.round(1)  # ties within and across classes
    z, p = P.delong_test(y, a, b)
    z_ref, p_ref = _delong_by_definition(y, a, b)
    assert z == pytest.approx(z_ref, rel=1e-9) and p == pytest.approx(p_ref, rel=1e-6)
    # DeLong's standard error of the difference and the paired bootstrap's agree (large-sample theory).
    y, a, b = scores(n=600, seed=4, strengths=(1.8, 1.2))
    z, p = P.delong_test(y, a, b)
    r = P.paired_auc_difference(y, a, b, n_resamples=2000, seed=0)
    se_delong = r["difference"] / z
    se_boot = (r["ci_high"] - r["ci_low"]) / (2 * 1.959964)
    assert se_boot == pytest.approx(se_delong, rel=0.15)
    assert r["p_delong"] == pytest.approx(p) and r["p_value"] == pytest.approx(p, abs=0.05)


def test_one_class_or_a_single_image_of_a_class_gives_nan_not_a_crash():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.8, 0.7, 0.9])
    with pytest.warns(RuntimeWarning, match=">= 2 images of each class"):
        r = P.paired_auc_difference(y, p, p[::-1].copy(), n_resamples=50)
    assert math.isnan(r["ci_low"]) and math.isnan(r["p_value"]) and not math.isnan(r["difference"])
    assert P.verdict(r["ci_low"], r["ci_high"]) == "n/a"
    assert all(math.isnan(v) for v in P.delong_test(y, p, p))


# --------------------------------------------------------------------------------------------
# Pairing by image
# --------------------------------------------------------------------------------------------


def _sets(n=120, seed=0, strengths=(2.0, 1.0), external=True):
    y, *ps = scores(n=n, seed=seed, strengths=strengths)
    paths = [f"test/{'PNEUMONIA' if c else 'NORMAL'}/img{i}.jpeg" for i, c in enumerate(y)]
    per_model = []
    for p in ps:
        sets = {"test": (paths, y, p)}
        if external:
            sets["shift"] = (paths[:80], y[:80], np.clip(p[:80] * 0.9, 0, 1))
        per_model.append(sets)
    return per_model


def test_images_are_paired_by_path_not_by_row_order(tmp_path):
    sel, oth = _sets(external=False)
    write_predictions(tmp_path / "a", "cnn", sel)
    write_predictions(tmp_path / "a", "vit", oth)
    paths, y, p = oth["test"]
    order = np.random.default_rng(1).permutation(len(y))  # vit's file in another order
    write_predictions(tmp_path / "b", "cnn", sel)
    write_predictions(tmp_path / "b", "vit", {"test": ([paths[i] for i in order], y[order], p[order])})
    reports = []
    for root in ("a", "b"):
        preds = {m: P.read_predictions(tmp_path / root, m) for m in ("cnn", "vit")}
        reports.append(P.compare_with_selected(preds, "cnn", ["cnn", "vit"], n_resamples=200))
    assert reports[0] == reports[1]
    (row,) = reports[0]["comparisons"]
    assert row["model"] == "vit" and row["set"] == P.INTERNAL and row["n"] == 120 and row["difference"] < 0


def test_prediction_files_of_different_images_are_refused_with_the_fix(tmp_path):
    sel, oth = _sets(external=False)
    write_predictions(tmp_path, "cnn", sel)
    paths, y, p = oth["test"]
    write_predictions(tmp_path, "vit", {"test": ([*paths[:-2], "test/NORMAL/new.jpeg", paths[-1]], y, p)})
    preds = {m: P.read_predictions(tmp_path, m) for m in ("cnn", "vit")}
    with pytest.raises(P.PairingError) as err:
        P.compare_with_selected(preds, "cnn", ["cnn", "vit"], n_resamples=50)
    msg = str(err.value)
    assert "vit/predictions.csv and " in msg and "cnn/predictions.csv do not hold the same images" in msg
    assert "1 only in the first (e.g. 'test/NORMAL/new.jpeg')" in msg and "1 only in the second" in msg
    assert msg.endswith("paired by path: rerun `dvc repro evaluate@vit evaluate@cnn` to score both on the current data")

    flipped = y.copy()
    flipped[0] = 1 - flipped[0]
    write_predictions(tmp_path, "vit", {"test": (paths, flipped, p)})
    with pytest.raises(P.PairingError, match="disagree on the label of 1 image"):
        P.compare_with_selected({m: P.read_predictions(tmp_path, m) for m in ("cnn", "vit")}, "cnn", ["cnn", "vit"])

    write_predictions(tmp_path, "vit", {"test": ([paths[0], *paths[:-1]], y, p)})
    with pytest.raises(P.PairingError, match=r"lists 1 image path\(s\) more than once .*evaluate@vit"):
        P.read_predictions(tmp_path, "vit")
    (tmp_path / "vit/predictions.csv").write_text("file,probability\na.png,0.3\n")
    with pytest.raises(P.PairingError, match=r"lacking \['path', 'label'\]"):
        P.read_predictions(tmp_path, "vit")


def test_external_sets_are_compared_and_must_be_the_same_sets(tmp_path):
    sel, oth = _sets()
    write_predictions(tmp_path, "cnn", sel)
    write_predictions(tmp_path, "vit", oth)
    preds = {m: P.read_predictions(tmp_path, m) for m in ("cnn", "vit")}
    assert list(preds["cnn"]) == [P.INTERNAL, "shift"] and preds["cnn"]["shift"][0].endswith("external.csv (set shift)")
    report = P.compare_with_selected(preds, "cnn", ["cnn", "vit"], n_resamples=100)
    assert [(c["set"], c["n"]) for c in report["comparisons"]] == [(P.INTERNAL, 120), ("shift", 80)]
    # vit scored on another external set (a stale evaluate): refused, naming both
    write_predictions(tmp_path, "vit", {"test": oth["test"], "other": oth["shift"]})
    preds["vit"] = P.read_predictions(tmp_path, "vit")
    with pytest.raises(P.PairingError, match="vit's external predictions hold set 'other', cnn's do not"):
        P.compare_with_selected(preds, "cnn", ["cnn", "vit"], n_resamples=50)
    # vit without external.csv: compared on the internal test only, with a warning
    (tmp_path / "vit/external.csv").unlink()
    with pytest.warns(RuntimeWarning, match="internal test only"):
        preds["vit"] = P.read_predictions(tmp_path, "vit")
    report = P.compare_with_selected(preds, "cnn", ["cnn", "vit"], n_resamples=50)
    assert [c["set"] for c in report["comparisons"]] == [P.INTERNAL]


def test_a_model_without_predictions_is_listed_not_compared(tmp_path):
    sel, oth, third = _sets(strengths=(2.0, 1.9, 0.5), external=False)
    for m, s in (("cnn", sel), ("vit", oth), ("vgg16", third)):
        write_predictions(tmp_path, m, s)
    with pytest.warns(RuntimeWarning, match="no paired comparison for resnet50: .*evaluate@resnet50"):
        preds = {m: P.read_predictions(tmp_path, m) for m in ("cnn", "resnet50", "vit", "vgg16")}
    report = P.compare_with_selected(preds, "cnn", ["cnn", "resnet50", "vit", "vgg16"], n_resamples=300)
    assert [c["model"] for c in report["comparisons"]] == ["vit", "vgg16"]
    assert report["not_compared"] == {"resnet50": "no predictions of resnet50"}
    assert [c["verdict"] for c in report["comparisons"]] == ["indistinguishable", "worse"]
    # the selected model's predictions missing: nothing compared, every other model listed
    report = P.compare_with_selected({**preds, "cnn": None}, "cnn", ["cnn", "vit"], n_resamples=50)
    assert report["comparisons"] == [] and report["not_compared"] == {"vit": "no predictions of cnn"}
    md = "\n".join(P.paired_markdown(report, table_number=2))
    assert "No paired comparison with **cnn**: no predictions of cnn" in md and "Table 2" not in md


# --------------------------------------------------------------------------------------------
# The section of reports/results.md
# --------------------------------------------------------------------------------------------


def _row(model, set_name, diff, low, high, p, verdict_code, n=100):
    return {
        "model": model,
        "set": set_name,
        "n": n,
        "roc_auc": 0.9 + diff,
        "roc_auc_selected": 0.9,
        "difference": diff,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "p_delong": p / 2,
        "verdict": verdict_code,
    }


def test_the_section_says_in_words_whom_the_selected_model_is_distinguishable_from():
    report = {
        "selected": "cnn",
        "confidence": 0.95,
        "n_resamples": 1000,
        "comparisons": [
            _row("resnet50", P.INTERNAL, -0.010, -0.030, 0.008, 0.31, "indistinguishable"),
            _row("resnet_small", P.INTERNAL, -0.010, -0.034, 0.012, 0.40, "indistinguishable"),
            _row("vit", P.INTERNAL, -0.093, -0.150, -0.040, 2 / 1001, "worse"),
            _row("resnet50", "shift", 0.031, 0.004, 0.060, 0.03, "better", n=118),
            _row("resnet_small", "shift", -0.074, -0.13, -0.02, 0.0004, "worse", n=118),
            _row("vit", "shift", float("nan"), float("nan"), float("nan"), float("nan"), "n/a", n=118),
        ],
        "not_compared": {"vgg16": "no predictions of vgg16"},
    }
    md = cells("\n".join(P.paired_markdown(report, table_number=3)))
    assert md.startswith("## Paired comparison with the selected model")
    assert "**Table 3.** Each model against the selected model **cnn** on the same images" in md
    assert "| Model | Set | Images | ROC-AUC | ΔAUC vs cnn (95 % CI) | p (bootstrap) | p (DeLong) | Verdict |" in md
    assert "| resnet50 | internal test | 100 | 0.890 | -0.010 (-0.030 to +0.008) | 0.310 | 0.155 |" in md
    assert "| indistinguishable from cnn (CI includes 0) |" in md
    # 0.002 is the floor 2 / (1000 + 1) of a 1000-resample bootstrap p-value: "≤", not "="
    assert "| vit | internal test | 100 | 0.807 | -0.093 (-0.150 to -0.040) | ≤ 0.002 | < 0.001 | worse" in md
    assert "| 0.030 | 0.015 | better than cnn (CI above 0) |" in md
    assert "| ≤ 0.002 | < 0.001 | worse than cnn (CI below 0) |" in md
    assert "| n/a | n/a | not computable" in md
    assert (
        "On the internal test (100 images, cnn ROC-AUC 0.900), **cnn** is not distinguishable from resnet50 "
        "and resnet_small (the 95 % CI of the difference includes 0); it is better than vit (the CI lies below 0)."
        in md
    )
    assert "On the external set shift (118 images, cnn ROC-AUC 0.900), **cnn** is better than resnet_small" in md
    assert "it is worse than resnet50 (the CI lies above 0" in md and "cannot be compared with vit" in md
    assert "Not compared: vgg16 (no predictions of vgg16)." in md


def test_the_report_round_trips_as_json(tmp_path):
    import json

    from cxr.files import write_metrics

    sel, oth = _sets(external=False)
    write_predictions(tmp_path, "cnn", sel)
    write_predictions(tmp_path, "vit", oth)
    report = P.compare_with_selected(
        {m: P.read_predictions(tmp_path, m) for m in ("cnn", "vit")}, "cnn", ["cnn", "vit"], n_resamples=100, seed=7
    )
    back = json.loads(write_metrics(tmp_path / "paired.json", report).read_text())
    assert back["selected"] == "cnn" and back["seed"] == 7 and back["n_resamples"] == 100
    assert set(back["comparisons"][0]) >= {"difference", "ci_low", "ci_high", "p_value", "p_delong", "verdict"}
    assert pd.Series(back["comparisons"][0]).drop("verdict").notna().all()
