"""What temperature scaling and the refer band do on the test split and each external set: reports, figures, tables.

    calibration_report(labels, raw_probs, temperature)     # ECE and Brier before and after temperature scaling
    refer_report(labels, probs, threshold, band, cfg)      # coverage and error among decided, with bootstrap CIs
    reliability_figure(...), refer_figure(...)             # figures/eval/<model>/calibration.png, refer.png
    calibration_markdown(eval_metrics, n), refer_markdown(eval_metrics, n)   # compare's tables

The temperature and the band come from the model card (chosen on validation by train: cxr.calibration,
cxr.abstention); the sets here are only scored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cxr import plots
from cxr.abstention import alpha_grid, band_curve, describe_refer, selective
from cxr.calibration import apply_temperature
from cxr.config import EvaluateConfig
from cxr.metrics import binary_metrics, calibration_points

# The levels of the refer figure's curves: from no band (alpha 0.5) to a band holding nearly everything.
CURVE_ALPHAS = alpha_grid(0.5, 100)


def calibration_report(labels, raw_probs, temperature: float) -> dict[str, Any]:
    """{"temperature", "uncalibrated": {"brier", "ece"}, "calibrated": {...}}: the set's raw probabilities and
    the card's (sigmoid(logit / T)); with T = 1 both are the same."""
    out: dict[str, Any] = {"temperature": float(temperature)}
    for key, p in (("uncalibrated", raw_probs), ("calibrated", apply_temperature(raw_probs, temperature))):
        m = binary_metrics(labels, p)
        out[key] = {"brier": m["brier"], "ece": m["ece"]}
    return out


def _bootstrap(labels, probs, threshold: float, band, cfg: EvaluateConfig) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over images (resampled together, so coverage varies too) of coverage and error among
    decided; a resample with nothing decided has no error and is left out of that interval."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=float)
    rng = np.random.default_rng(cfg.seed)
    cov, err = [], []
    for _ in range(cfg.n_resamples):
        i = rng.integers(0, len(y), len(y))
        s = selective(y[i], p[i], threshold, band)
        cov.append(s["coverage"])
        if s["n_decided"]:
            err.append(s["error_among_decided"])
    q = ((1 - cfg.confidence) / 2, (1 + cfg.confidence) / 2)

    def interval(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        lo, hi = np.quantile(values, q)
        return float(lo), float(hi)

    return {"coverage": interval(cov), "error_among_decided": interval(err)}


def refer_report(labels, probs, threshold: float, band: tuple[float, float], cfg: EvaluateConfig) -> dict[str, Any]:
    """The band's low and high, the counts, coverage (share decided) and error among decided with CIs."""
    s = selective(labels, probs, threshold, band)
    ci = _bootstrap(labels, probs, threshold, band, cfg)
    out: dict[str, Any] = {"low": float(band[0]), "high": float(band[1])}
    out.update({k: s[k] for k in ("n", "n_decided", "n_refer", "n_errors")})
    for k in ("coverage", "error_among_decided"):
        out[k] = {"value": s[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def reliability_figure(labels, raw_probs, probs, *, temperature: float, label: str, title: str) -> Figure:
    """The reliability diagram of the card's probabilities (solid, with the bin counts) and, when a temperature
    was applied, of the raw ones before it (dashed)."""
    after = calibration_points(labels, probs)
    ece_after = binary_metrics(labels, probs)["ece"]
    fig = plots.calibration_figure(
        after["mean_predicted"],
        after["fraction_positive"],
        after["count"],
        ece=ece_after,
        title=title,
        label=label,
    )
    ax = fig.axes[0]
    if temperature != 1.0:
        before = calibration_points(labels, raw_probs)
        ece_before = binary_metrics(labels, raw_probs)["ece"]
        ax.lines[-1].set_label(f"{label}, T = {temperature:.2f} (ECE = {ece_after:.3f})")
        plots.draw_reliability(
            ax,
            before["mean_predicted"],
            before["fraction_positive"],
            f"{label}, before scaling (ECE = {ece_before:.3f})",
            ls="--",
            lw=1.5,
            color=plots.model_color(label),
            alpha=0.6,
        )
        ax.legend(loc="upper left", fontsize=9)
    return fig


def refer_figure(
    val: tuple, sets: dict[str, tuple], threshold: float, card_refer: dict[str, Any], *, title: str
) -> Figure:
    """Error among decided vs coverage as the band widens (each level's band set on validation), for
    validation (``val`` = (labels, probs)) and each of ``sets`` (name -> (labels, probs)); the card's band
    marked on each curve, the target as a line."""
    fig, axes = plots.figure_grid(6.4, 4.8)
    ax = axes[0, 0]
    band = (card_refer["low"], card_refer["high"])
    styles = ["-", "--", ":", "-."]
    for k, (name, (y, p)) in enumerate({"validation": val, **sets}.items()):
        c = band_curve(val[0], val[1], threshold, y, p, CURVE_ALPHAS, card_refer.get("confidence"))
        (line,) = ax.plot(100 * c["coverage"], 100 * c["error"], ls=styles[k % len(styles)], lw=1.8, label=name)
        s = selective(y, p, threshold, band)
        ax.plot(100 * s["coverage"], 100 * np.nan_to_num(s["error_among_decided"]), "o", color=line.get_color())
    ax.axhline(100 * card_refer["target_error"], color="grey", lw=1, ls="--", label="target (validation)")
    ax.set_xlabel("Coverage: images decided (%)")
    ax.set_ylabel("Error among decided images (%)")
    ax.set_xlim(0, 101)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, title="dots: the model card's band")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# compare's tables
# --------------------------------------------------------------------------------------------


def _sets(report: dict) -> list[tuple[str, dict]]:
    return [("internal test", report), *((n, r) for n, r in (report.get("external") or {}).items())]


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def calibration_markdown(eval_metrics: dict[str, dict], table_number: int) -> list[str]:
    """Per model and set: the card's temperature, ECE and Brier before and after temperature scaling."""
    rows = []
    for model, report in eval_metrics.items():
        for name, r in _sets(report):
            c = r.get("calibration")
            if not c:
                continue
            u, k = c["uncalibrated"], c["calibrated"]
            rows.append(
                f"| {model} | {_f(c['temperature'], 2)} | {name} | {_f(u['ece'])} | {_f(k['ece'])} | "
                f"{_f(u['brier'])} | {_f(k['brier'])} |"
            )
    if not rows:
        return []
    return [
        f"**Table {table_number}. Calibration: ECE and Brier before/after temperature scaling.** The temperature T "
        "is fitted on the validation split (`train.calibrate`; 1.00 = none applied) and stored in the model card; "
        "evaluate, `cxr predict` and the served model report sigmoid(logit / T). It does not move ROC-AUC or "
        "the decisions at a threshold chosen on validation.",
        "",
        "| Model | T | Set | ECE before | ECE after | Brier before | Brier after |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _pct_ci(d: dict) -> str:
    pct = lambda v: "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
    return f"{pct(d['value'])} ({pct(d['ci_low'])}-{pct(d['ci_high'])})"


def refer_markdown(eval_metrics: dict[str, dict], table_number: int) -> list[str]:
    """Per model and set: the refer band, coverage and error among decided with CIs, against the target; a model
    whose validation split was too small for the target gets one row that says so."""
    rows, target, conf = [], None, None
    for model, report in eval_metrics.items():
        for name, r in _sets(report):
            f = r.get("refer")
            if not f:
                continue
            target = f.get("target_error", target)
            conf = f.get("confidence", conf)
            if "low" not in f:
                if name == "internal test":  # once per model: the card has no band, nothing is scored
                    rows.append(f"| {model} | {describe_refer(f)} | every set | | | |")
                continue
            rows.append(
                f"| {model} | {_f(f['low'])}-{_f(f['high'])} | {name} | {f['n_refer']} / {f['n']} | "
                f"{_pct_ci(f['coverage'])} | {_pct_ci(f['error_among_decided'])} |"
            )
    if not rows:
        return []
    goal = f"{100 * target:g} %" if target else "the target"
    how = (
        f"each class with {100 * conf:g} % confidence over the validation draw, both classes at once (and so an "
        f"error among decided images of at most {goal} / coverage) with at least "
        f"{100 * max(0.0, 1 - 2 * (1 - conf)):g} % (training-conditional split conformal, Vovk 2012)"
        if conf
        else "in expectation over validation draws (split conformal)"
    )
    return [
        f"**Table {table_number}. Refer band.** Images with a probability inside the band are answered REFER. The "
        "band is chosen on validation (class-conditional split conformal, `evaluate.refer.target_error`): for new "
        f"images of the validation population, at most {goal} of each class is decided wrongly, {how}, with the "
        "validation split's own numbers of NORMAL and PNEUMONIA images; the band's level is the largest, at most "
        f"{goal}, whose error among the decided validation images is at most {goal} (met on validation, not "
        "guaranteed). This takes the validation images as independent draws that chose nothing about the model; "
        "they also chose its epoch (and a sweep's configuration), and one patient's images are not independent. "
        "A split with too few images of a class for the target gets no band. Other sites (the external sets) "
        "carry no guarantee: every set is only scored here (%, bootstrap CIs).",
        "",
        "| Model | Band | Set | Referred | Coverage % | Error among decided % |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
