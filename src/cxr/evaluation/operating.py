"""Operating points: a target sensitivity or specificity, met on validation, and what it gives elsewhere.

    points = choose_thresholds(val_labels, val_probs, cfg.operating_points)   # validation only
    report = score_operating_points(test_labels, test_probs, points, cfg)     # the test, or an external set

A screening use fixes a sensitivity (say 95 %) and asks what specificity it costs; a confirmation use
fixes a specificity. The threshold is the one that meets the target on the validation split (the most
specific threshold that reaches the sensitivity, or the most sensitive that reaches the specificity);
the test split and every external set are only scored at it, with bootstrap CIs, so the report shows
whether a target set at one site holds at another. ``evaluate.operating_points`` lists the targets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_curve

from cxr.config import EvaluateConfig, OperatingTarget
from cxr.metrics import binary_metrics, bootstrap_ci


@dataclass(frozen=True)
class OperatingThreshold:
    metric: str  # sensitivity | specificity: the one the target is set on
    target: float
    threshold: float  # P(pneumonia) >= threshold -> PNEUMONIA
    val_sensitivity: float  # reached on validation at the threshold
    val_specificity: float

    @property
    def label(self) -> str:
        return f"{self.metric} {self.target:.0%}"


def choose_thresholds(labels, probs, targets: list[OperatingTarget]) -> list[OperatingThreshold]:
    """Each target's threshold on validation (``labels``, ``probs``): for a sensitivity, the highest
    threshold whose sensitivity reaches it; for a specificity, the lowest whose specificity does."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    if not targets:
        return []
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("operating points need both classes in the validation split")
    fpr, tpr, thresholds = roc_curve(labels, probs, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf: nothing called PNEUMONIA
    out = []
    for t in targets:
        if t.metric == "sensitivity":
            i = int(np.argmax(tpr >= t.target - 1e-12))  # thresholds descend: the first is the highest
        else:
            i = int(np.nonzero(1 - fpr >= t.target - 1e-12)[0].max())  # the last is the lowest
        out.append(OperatingThreshold(t.metric, t.target, float(thresholds[i]), float(tpr[i]), float(1 - fpr[i])))
    return out


def score_operating_points(labels, probs, points: list[OperatingThreshold], cfg: EvaluateConfig) -> list[dict]:
    """Sensitivity and specificity reached on ``labels``/``probs`` at each point's threshold, with CIs
    (the stratified bootstrap of :func:`cxr.metrics.bootstrap_ci`); JSON-ready."""
    out = []
    for point in points:
        m = binary_metrics(labels, probs, point.threshold)
        ci = bootstrap_ci(
            labels, probs, point.threshold, n_resamples=cfg.n_resamples, seed=cfg.seed, confidence=cfg.confidence
        )
        row = asdict(point)
        for k in ("sensitivity", "specificity"):
            row[k] = {"value": m[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
        row["target_met"] = bool(m[point.metric] >= point.target) if not math.isnan(m[point.metric]) else None
        out.append(row)
    return out


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def operating_points_markdown(eval_metrics: dict[str, dict], table_number: int) -> list[str]:
    """The results section's table: per model and target, the validation threshold, then sensitivity and
    specificity (with CIs) on the internal test and on each external set."""
    rows = []
    for model, report in eval_metrics.items():
        sets = [("internal test", report.get("operating_points") or [])]
        sets += [(name, r.get("operating_points") or []) for name, r in (report.get("external") or {}).items()]
        for name, points in sets:
            for p in points:
                sens, spec = p["sensitivity"], p["specificity"]
                held = {True: "yes", False: "**no**", None: "n/a"}[p["target_met"]]
                rows.append(
                    f"| {model} | {p['metric']} {100 * p['target']:.0f} % | {p['threshold']:.3f} | {name} | "
                    f"{_pct(sens['value'])} ({_pct(sens['ci_low'])}-{_pct(sens['ci_high'])}) | "
                    f"{_pct(spec['value'])} ({_pct(spec['ci_low'])}-{_pct(spec['ci_high'])}) | {held} |"
                )
    if not rows:
        return []
    conf = next(iter(eval_metrics.values())).get("confidence", 0.95)
    return [
        f"**Table {table_number}. Operating points.** Each target is met on the validation split, which sets "
        "the threshold; the internal test and each external set are scored at that threshold (sensitivity "
        f'and specificity in %, {conf:.0%} bootstrap CIs). "Held": the target is still reached there.',
        "",
        "| Model | Target (validation) | Threshold | Set | Sensitivity % | Specificity % | Held |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
