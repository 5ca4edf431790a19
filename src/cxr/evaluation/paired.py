"""Paired comparisons: every model against the selected one, in ROC-AUC, on the same images.

    preds = {m: read_predictions(Path("eval"), m) for m in models}    # None (a warning) when missing
    report = compare_with_selected(preds, "cnn", models, n_resamples=1000, seed=0)   # metrics/paired.json
    lines = paired_markdown(report, table_number=3)                  # the section of reports/results.md

    r = paired_auc_difference(y, p_selected, p_other, n_resamples=1000, seed=0)   # one pair, one set
    z, p = delong_test(y, p_selected, p_other)                                    # the cross-check

Two models scored on the same images make correlated errors, so overlapping marginal CIs (Table 1)
neither show nor exclude a difference; the CI of the paired difference does. The primary method is a
paired bootstrap: ``scipy.stats.bootstrap`` resamples the images within each class, as the single-model
intervals do (``cxr.metrics.bootstrap_ci``: same seed, resample count and confidence from params.yaml's
``evaluate``), and each resample holds the same images for both models (each class is one sample of
shape (2, n): both models' scores, resampled along the images). Its p-value inverts the percentile
interval: p = 2 (min(#{d* <= 0}, #{d* >= 0}) + 1) / (B + 1), at most 1, so p < 1 - confidence when the
interval excludes 0 (up to the interpolation of its ends and the +1, which keeps p above 0). DeLong's
test (no scipy or scikit-learn implementation) is reported beside it as a cross-check.

Images are paired by their ``path`` (within each set), never by row order: two prediction files that do
not hold the same images, or disagree on a label, raise PairingError.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from cxr import CLASSES
from cxr.candidates import evaluate_stage
from cxr.metrics import _check_inputs

# The set name of the internal test split (predictions.csv); external sets keep theirs, which cannot hold a
# space (config.EXTERNAL_NAME), so no external set can take this one.
INTERNAL = "internal test"
COLUMNS = ("path", "label", "probability")
METHOD = "paired stratified bootstrap (percentile CI; p-value by inverting it); DeLong's test as a cross-check"
VERDICTS = ("indistinguishable", "worse", "better", "n/a")


class PairingError(ValueError):
    """Two models' prediction files do not hold the same images (the fix: rerun their evaluate stages)."""


# --------------------------------------------------------------------------------------------
# The statistics
# --------------------------------------------------------------------------------------------


def _auc_difference(neg, pos, axis=-1):
    """ROC-AUC of row 0 minus ROC-AUC of row 1 (Mann-Whitney U / (n_pos n_neg), ties 1/2).

    ``neg`` and ``pos`` are the two models' scores of the NORMAL and the PNEUMONIA images, shape
    (2, ..., n_class); ``scipy.stats.bootstrap`` adds a resample axis before the images."""
    neg, pos = np.asarray(neg, dtype=float), np.asarray(pos, dtype=float)
    auc = scipy.stats.mannwhitneyu(pos, neg, axis=axis).statistic / (pos.shape[axis] * neg.shape[axis])
    return auc[0] - auc[1]


def paired_auc_difference(
    y, p_selected, p_other, *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """ROC-AUC of ``p_other`` minus that of ``p_selected`` on the same images ``y``, with its paired bootstrap.

    Returns {roc_auc, roc_auc_selected, difference, ci_low, ci_high, p_value, p_delong}. The images are
    resampled within each class (every resample keeps the set's class counts) and each resample holds the
    same images for both models. With fewer than two images of a class, everything but the point
    estimates is NaN (a warning, as ``cxr.metrics.bootstrap_ci``).
    """
    y, p_sel = _check_inputs(y, p_selected)
    _, p_oth = _check_inputs(y, p_other)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), found {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, found {n_resamples}")
    scores = np.stack([p_oth, p_sel])
    neg, pos = scores[:, y == 0], scores[:, y == 1]
    nan = float("nan")
    out = {"roc_auc": nan, "roc_auc_selected": nan, "difference": nan, "ci_low": nan, "ci_high": nan}
    if neg.shape[1] and pos.shape[1]:
        auc = scipy.stats.mannwhitneyu(pos, neg, axis=-1).statistic / (pos.shape[1] * neg.shape[1])
        out.update(roc_auc=float(auc[0]), roc_auc_selected=float(auc[1]), difference=float(auc[0] - auc[1]))
    if neg.shape[1] < 2 or pos.shape[1] < 2:
        warnings.warn(
            f"paired bootstrap needs >= 2 images of each class, found {neg.shape[1]} NORMAL and {pos.shape[1]} "
            "PNEUMONIA; the confidence interval and p-values are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return {**out, "p_value": nan, "p_delong": nan}
    with warnings.catch_warnings():
        # Identical scores give a difference of 0 in every resample: a degenerate distribution whose
        # interval (0, 0) is the honest answer.
        warnings.simplefilter("ignore", category=scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(
            (neg, pos),
            _auc_difference,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            paired=False,  # the classes are resampled apart; within a class, both rows share the draw
            axis=-1,
            rng=np.random.default_rng(seed),
        )
    d = np.asarray(res.bootstrap_distribution)
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high))
    out["p_value"] = min(1.0, 2 * (tail + 1) / (len(d) + 1))
    out["p_delong"] = delong_test(y, p_sel, p_oth)[1]
    return out


def delong_test(y, p_selected, p_other) -> tuple[float, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) for two correlated ROC curves: (z, two-sided p) of the ROC-AUC
    of ``p_other`` minus that of ``p_selected`` on the same images, with midranks (Sun & Xu 2014).

    The structural components: for each PNEUMONIA image the share of NORMAL images it outscores, for each
    NORMAL image the share of PNEUMONIA images that outscore it (ties 1/2); the difference's variance is
    their covariance over the images. Identical scores: (0, 1). Fewer than two images of a class: NaN.
    """
    y, p_sel = _check_inputs(y, p_selected)
    _, p_oth = _check_inputs(y, p_other)
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    scores = np.stack([p_oth, p_sel])
    x, z = scores[:, pos], scores[:, ~pos]
    ranks = scipy.stats.rankdata(np.concatenate([x, z], axis=1), axis=1)
    v10 = (ranks[:, :m] - scipy.stats.rankdata(x, axis=1)) / n  # NORMALs below each PNEUMONIA image
    v01 = 1 - (ranks[:, m:] - scipy.stats.rankdata(z, axis=1)) / m  # PNEUMONIAs above each NORMAL image
    s = np.cov(v10) / m + np.cov(v01) / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = float(v10[0].mean() - v10[1].mean())
    if var <= 0:  # the two score sets rank every pair alike
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    zstat = diff / math.sqrt(var)
    return zstat, float(2 * scipy.stats.norm.sf(abs(zstat)))


def verdict(ci_low: float, ci_high: float) -> str:
    """indistinguishable (the CI includes 0) | worse (below 0) | better (above 0) | n/a (no CI)."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "n/a"
    return "worse" if ci_high < 0 else "better" if ci_low > 0 else "indistinguishable"


# --------------------------------------------------------------------------------------------
# Prediction files, paired by image
# --------------------------------------------------------------------------------------------


def prediction_rows(table: pd.DataFrame, where: str, model: str) -> pd.DataFrame:
    """The path, label (0/1) and probability columns of one set, checked."""
    fix = f"rerun `dvc repro {evaluate_stage(model)}`"
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise PairingError(
            f"{where} has columns {list(table.columns)}, lacking {missing}; expected {list(COLUMNS)} "
            f"(evaluate's per-image predictions): {fix}"
        )
    labels = table["label"].astype(str)
    odd = sorted(set(labels) - set(CLASSES))
    if odd:
        raise PairingError(f"{where}: labels must be {' or '.join(CLASSES)}, found {odd[:5]}: {fix}")
    prob = pd.to_numeric(table["probability"], errors="coerce")
    if not (prob.between(0, 1)).all():
        raise PairingError(f"{where}: probabilities must be numbers in [0, 1], some are not: {fix}")
    dup = table["path"].astype(str)
    dup = dup[dup.duplicated()]
    if len(dup):
        raise PairingError(
            f"{where} lists {dup.nunique()} image path(s) more than once (e.g. {dup.iloc[0]!r}); "
            f"expected one row per image: {fix}"
        )
    return pd.DataFrame(
        {"path": table["path"].astype(str), "y": labels.map(CLASSES.index), "p": prob.astype(float)}
    ).reset_index(drop=True)


def read_predictions(folder: str | Path, model: str) -> dict[str, tuple[str, pd.DataFrame]] | None:
    """set -> (file it came from, rows: path, y, probability) of one model's evaluate outputs: INTERNAL from
    <folder>/<model>/predictions.csv, each external set from <folder>/<model>/external.csv (its ``set``
    column). None, with a warning, when predictions.csv is missing (the model was not evaluated)."""
    internal = Path(folder) / model / "predictions.csv"
    if not internal.is_file():
        warnings.warn(
            f"compare: no paired comparison for {model}: {internal} is missing "
            f"(run `dvc repro {evaluate_stage(model)}`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    out = {INTERNAL: (str(internal), prediction_rows(pd.read_csv(internal, dtype={"path": str}), str(internal), model))}
    external = Path(folder) / model / "external.csv"
    if not external.is_file():
        warnings.warn(
            f"compare: {external} is missing: {model} is compared on the internal test only "
            f"(run `dvc repro {evaluate_stage(model)}`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return out
    ext = pd.read_csv(external, dtype={"path": str, "set": str})
    if not len(ext):  # evaluate ran without external sets
        return out
    if "set" not in ext.columns:
        raise PairingError(f"{external} has no `set` column: rerun `dvc repro {evaluate_stage(model)}`")
    for name, rows in ext.groupby("set", sort=False):
        where = f"{external} (set {name})"
        out[str(name)] = (where, prediction_rows(rows, where, model))
    return out


def pair_images(
    selected: tuple[str, pd.DataFrame],
    other: tuple[str, pd.DataFrame],
    fix: str = "rerun both models' `dvc repro evaluate@<model>`",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, selected model's probabilities, other model's) of the same images, joined on ``path``, in
    the selected model's file order. PairingError (ending in ``fix``) when the files hold different images
    or labels."""
    (sel_file, sel), (oth_file, oth) = selected, other
    only_sel = sel.loc[~sel["path"].isin(oth["path"]), "path"]
    only_oth = oth.loc[~oth["path"].isin(sel["path"]), "path"]
    if len(only_sel) or len(only_oth):
        raise PairingError(
            f"{oth_file} and {sel_file} do not hold the same images: {len(only_oth)} only in the first"
            f"{_example(only_oth)}, {len(only_sel)} only in the second{_example(only_sel)}; expected the same "
            f"images in both, paired by path: {fix}"
        )
    both = sel.merge(oth, on="path", how="left", suffixes=("_sel", "_oth"), validate="one_to_one")
    differ = both.loc[both["y_sel"] != both["y_oth"], "path"]
    if len(differ):
        raise PairingError(
            f"{oth_file} and {sel_file} disagree on the label of {len(differ)} image(s){_example(differ)}; "
            f"expected the same labels: {fix}"
        )
    return both["y_sel"].to_numpy(), both["p_sel"].to_numpy(), both["p_oth"].to_numpy()


def _example(paths: pd.Series) -> str:
    return f" (e.g. {paths.iloc[0]!r})" if len(paths) else ""


def _shared_sets(sel: dict, oth: dict, selected: str, model: str) -> list[str]:
    """The sets both models were scored on; PairingError when one holds an external set the other lacks
    (a model without external.csv is compared on the internal test only: read_predictions warned)."""
    oth_has_ext = any(s != INTERNAL for s in oth)
    sel_has_ext = any(s != INTERNAL for s in sel)
    lone = [(s, model, selected) for s in oth if s not in sel and sel_has_ext]
    lone += [(s, selected, model) for s in sel if s not in oth and oth_has_ext]
    if lone:
        s, has, lacks = lone[0]
        raise PairingError(
            f"{has}'s external predictions hold set {s!r}, {lacks}'s do not; expected the same external sets: "
            f"rerun `dvc repro {evaluate_stage(lacks)} {evaluate_stage(has)}`"
        )
    return [s for s in sel if s in oth]


def compare_with_selected(
    predictions: dict[str, dict[str, tuple[str, pd.DataFrame]] | None],
    selected: str,
    models: list[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """metrics/paired.json: every model of ``models`` (in that order) against ``selected``, on every set
    both were scored on (the internal test first). A model without predictions is listed under
    ``not_compared``; so is every model when ``selected`` has none."""
    report: dict[str, Any] = {
        "selected": selected,
        "difference": "roc_auc(model) - roc_auc(selected), on the same images",
        "method": METHOD,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "comparisons": [],
        "not_compared": {},
    }
    sel = predictions.get(selected)
    for model in (m for m in models if m != selected):
        oth = predictions.get(model)
        if sel is None or oth is None:
            report["not_compared"][model] = f"no predictions of {selected if sel is None else model}"
            continue
        for set_name in _shared_sets(sel, oth, selected, model):
            stages = f"{evaluate_stage(model)} {evaluate_stage(selected)}"
            fix = f"rerun `dvc repro {stages}` to score both on the current data"
            y, p_sel, p_oth = pair_images(sel[set_name], oth[set_name], fix)
            r = paired_auc_difference(y, p_sel, p_oth, n_resamples=n_resamples, seed=seed, confidence=confidence)
            row = {"model": model, "set": set_name, "n": len(y), "n_normal": int((y == 0).sum())}
            row |= {"n_pneumonia": int(y.sum()), **{k: float(f"{v:.6g}") for k, v in r.items()}}
            report["comparisons"].append({**row, "verdict": verdict(r["ci_low"], r["ci_high"])})
    order = list(dict.fromkeys(c["set"] for c in report["comparisons"]))
    report["comparisons"].sort(key=lambda c: order.index(c["set"]))  # stable: models keep their order
    return report


# --------------------------------------------------------------------------------------------
# The section of reports/results.md
# --------------------------------------------------------------------------------------------


def _p(v, floor: float = 0.0) -> str:
    """A p-value to 3 decimals; at the bootstrap's floor 2 / (B + 1), "≤ floor" (more resamples could go lower)."""
    if v is None or math.isnan(v):
        return "n/a"
    if v <= floor * (1 + 1e-6):
        return f"≤ {floor:.3f}"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _set_label(name: str, long: bool = False) -> str:
    return f"external set {name}" if long and name != INTERNAL else name


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict_words(code: str, selected: str) -> str:
    return {
        "indistinguishable": f"indistinguishable from {selected} (CI includes 0)",
        "worse": f"worse than {selected} (CI below 0)",
        "better": f"better than {selected} (CI above 0)",
        "n/a": "not computable (a class with fewer than 2 images)",
    }[code]


def _summary(rows: list[dict], selected: str, pct: int) -> str:
    """One sentence per set: whom the selected model is, and is not, distinguishable from."""
    by = {v: [r["model"] for r in rows if r["verdict"] == v] for v in VERDICTS}
    parts = []
    if by["indistinguishable"]:
        parts.append(
            f"is not distinguishable from {_join(by['indistinguishable'])} "
            f"(the {pct} % CI of the difference includes 0)"
        )
    if by["worse"]:
        parts.append(f"is better than {_join(by['worse'])} (the CI lies below 0)")
    if by["better"]:
        parts.append(f"is worse than {_join(by['better'])} (the CI lies above 0: validation chose otherwise)")
    if by["n/a"]:
        parts.append(f"cannot be compared with {_join(by['n/a'])} (a class with fewer than 2 images)")
    r = rows[0]
    where = (
        f"the {_set_label(r['set'], long=True)} ({r['n']} images, {selected} ROC-AUC {_f(r['roc_auc_selected'], '')})"
    )
    return f"On {where}, **{selected}** " + "; it ".join(parts) + "."


def paired_markdown(report: dict[str, Any], table_number: int) -> list[str]:
    """The section "Paired comparison with the selected model": Table ``table_number`` and, per set, a
    sentence saying whether the selected model is distinguishable from each other one."""
    sel, rows = report["selected"], report["comparisons"]
    pct = round(100 * report["confidence"])
    lines = ["## Paired comparison with the selected model", ""]
    skipped = report["not_compared"]
    if not rows:
        why = f": {_join(sorted(set(skipped.values())))}" if skipped else ": no other model"
        return lines + [f"No paired comparison with **{sel}**{why} (run `dvc repro evaluate`).", ""]
    floor = 2 / (report["n_resamples"] + 1)
    lines += [
        f"**Table {table_number}.** Each model against the selected model **{sel}** on the same images "
        f"(paired by path): ΔAUC is the model's ROC-AUC minus {sel}'s, with its {pct} % confidence interval "
        f"from a paired bootstrap ({report['n_resamples']} resamples of the images within each class, as for "
        "Table 1's intervals, each holding the same images for both models) and its two-sided p-value. The "
        "bootstrap is the primary method: the verdict reads its interval. DeLong's test is a cross-check. "
        "Overlapping intervals in Table 1 neither show nor exclude a difference; the interval of the paired "
        "difference does.",
        "",
    ]
    table = pd.DataFrame(
        {
            "Model": [r["model"] for r in rows],
            "Set": [_set_label(r["set"]) for r in rows],
            "Images": [str(r["n"]) for r in rows],
            "ROC-AUC": [_f(r["roc_auc"], "") for r in rows],
            f"ΔAUC vs {sel} ({pct} % CI)": [_diff(r) for r in rows],
            "p (bootstrap)": [_p(r["p_value"], floor) for r in rows],
            "p (DeLong)": [_p(r["p_delong"]) for r in rows],
            "Verdict": [verdict_words(r["verdict"], sel) for r in rows],
        }
    )
    lines += [str(table.to_markdown(index=False, disable_numparse=True)), ""]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        lines += [_summary([r for r in rows if r["set"] == set_name], sel, pct), ""]
    if skipped:
        lines += [f"Not compared: {'; '.join(f'{m} ({why})' for m, why in skipped.items())}.", ""]
    return lines


def _f(v, sign: str) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:{sign}.3f}"


def _diff(r: dict) -> str:
    return f"{_f(r['difference'], '+')} ({_f(r['ci_low'], '+')} to {_f(r['ci_high'], '+')})"
