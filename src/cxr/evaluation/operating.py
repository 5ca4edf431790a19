"""Operating points: a target sensitivity or specificity, met on validation with its sample size in mind.

    points = choose_thresholds(val_labels, val_probs, cfg.operating_points, confidence=0.95)   # validation only
    report = score_operating_points(test_labels, test_probs, points, cfg)     # the test, or an external set

A screening use fixes a sensitivity (say 95 %) and asks what specificity it costs; a confirmation use
fixes a specificity. A threshold at the far edge of the validation range that meets the target (the most
specific threshold reaching the sensitivity) meets it on validation only: new images fall short of such an
edge. Here the threshold is the order statistic of the target class whose one-sided lower confidence bound
(level ``confidence``, exact: the Beta distribution of an order statistic's coverage, which is the
Clopper-Pearson bound) reaches the target: for a sensitivity of 95 %, the j-th smallest validation
PNEUMONIA score, j the largest rank with P(Beta(j, n1 + 1 - j) <= 5 %) >= 95 %; so, for new images of the
validation population, the sensitivity at it is at least 95 % with 95 % confidence over the validation
draw. When the class has too few images for any rank (59 for 95 % at 95 %), the point has no threshold and
says how many it needs. The test split and every external set are only scored at the thresholds, with
bootstrap CIs. Chosen by train (:class:`cxr.policy.ValidationPolicy`) and kept in the model card, so
``cxr predict --operating-point`` and the served model answer at them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr import CLASSES
from cxr.abstention import needed_images, tolerance_rank
from cxr.config import EvaluateConfig, OperatingTarget
from cxr.metrics import binary_metrics, bootstrap_ci


@dataclass(frozen=True)
class OperatingThreshold:
    metric: str  # sensitivity | specificity: the one the target is set on
    target: float
    threshold: float | None  # P(pneumonia) >= threshold -> PNEUMONIA; None: validation too small for the target
    val_sensitivity: float | None  # reached on validation at the threshold
    val_specificity: float | None
    n: int = 0  # validation images of the target's class (PNEUMONIA for a sensitivity, NORMAL for a specificity)
    needs: int = 0  # the fewest images of that class that can support the target at the confidence
    confidence: float | None = None

    @property
    def label(self) -> str:
        return f"{self.metric} {self.target:.0%}"

    @property
    def name(self) -> str:
        """``sensitivity-95``: how ``cxr predict --operating-point`` and the served model name it."""
        return point_name(self.metric, self.target)

    @property
    def class_name(self) -> str:
        return CLASSES[1] if self.metric == "sensitivity" else CLASSES[0]

    def shortfall(self) -> str:
        """Why there is no threshold: ``needs at least 59 NORMAL images (validation has 19)``."""
        return f"needs at least {self.needs} {self.class_name} images (validation has {self.n})"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperatingThreshold:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _rank(n: int, target: float, confidence: float | None) -> int:
    """The rank j of the threshold among the target class's n scores (j - 1 of them on the wrong side)."""
    if confidence is None:  # the most images on the wrong side that still meets the target as measured
        return min(n, math.floor(n * (1 - target) + 1e-9) + 1)
    return tolerance_rank(n, 1 - target, confidence)


def point_name(metric: str, target: float) -> str:
    return f"{metric}-{100 * target:g}"


def choose_thresholds(
    labels, probs, targets: list[OperatingTarget], confidence: float | None = 0.95
) -> list[OperatingThreshold]:
    """Each target's threshold on validation (``labels``, ``probs``), at the rank of its class whose lower
    confidence bound reaches the target (see the module); ``confidence`` None: the far edge of the range that
    meets it as measured on validation (no margin for the sample: the rule before the bound)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    if not targets:
        return []
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("operating points need both classes in the validation split")
    pos, neg = np.sort(probs[labels == 1]), np.sort(probs[labels == 0])
    out = []
    for t in targets:
        scores = pos if t.metric == "sensitivity" else neg
        j = _rank(len(scores), t.target, confidence)
        needs = needed_images(1 - t.target, confidence) if confidence is not None else 1
        if j < 1:
            out.append(OperatingThreshold(t.metric, t.target, None, None, None, len(scores), needs, confidence))
            continue
        if t.metric == "sensitivity":  # the j-th smallest PNEUMONIA score: j - 1 of them fall below it
            threshold = float(pos[j - 1])
        else:  # just above the j-th largest NORMAL score: j - 1 of them reach it
            threshold = float(np.nextafter(neg[len(neg) - j], 2.0))
        sens, spec = float(np.mean(pos >= threshold)), float(np.mean(neg < threshold))  # on validation
        out.append(OperatingThreshold(t.metric, t.target, threshold, sens, spec, len(scores), needs, confidence))
    return out


def score_operating_points(labels, probs, points: list[OperatingThreshold], cfg: EvaluateConfig) -> list[dict]:
    """Sensitivity and specificity reached on ``labels``/``probs`` at each point's threshold, with CIs
    (the stratified bootstrap of :func:`cxr.metrics.bootstrap_ci`); JSON-ready."""
    out = []
    for point in points:
        row = asdict(point)
        if point.threshold is None:  # nothing to score: the report says what validation lacked
            out.append({**row, "target_met": None})
            continue
        m = binary_metrics(labels, probs, point.threshold)
        ci = bootstrap_ci(
            labels, probs, point.threshold, n_resamples=cfg.n_resamples, seed=cfg.seed, confidence=cfg.confidence
        )
        for k in ("sensitivity", "specificity"):
            row[k] = {"value": m[k], "ci_low": ci[k][0], "ci_high": ci[k][1]}
        row["target_met"] = bool(m[point.metric] >= point.target) if not math.isnan(m[point.metric]) else None
        out.append(row)
    return out


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def operating_points_markdown(eval_metrics: dict[str, dict], table_number: int) -> list[str]:
    """The results section's table: per model and target, the validation threshold, then sensitivity and
    specificity (with CIs) on the internal test and on each external set; a target validation cannot support
    gets one row that says how many images it needs."""
    rows = []
    for model, report in eval_metrics.items():
        sets = [("internal test", report.get("operating_points") or [])]
        sets += [(name, r.get("operating_points") or []) for name, r in (report.get("external") or {}).items()]
        for name, points in sets:
            for p in points:
                target = f"{p['metric']} {100 * p['target']:g} %"
                if p.get("threshold") is None:
                    if name == "internal test":  # once per model: the same shortfall on every set
                        why = OperatingThreshold.from_dict(p).shortfall()
                        rows.append(f"| {model} | {target} | none: {why} | every set | | | n/a |")
                    continue
                sens, spec = p["sensitivity"], p["specificity"]
                held = {True: "yes", False: "**no**", None: "n/a"}[p["target_met"]]
                rows.append(
                    f"| {model} | {target} | {p['threshold']:.3f} | {name} | "
                    f"{_pct(sens['value'])} ({_pct(sens['ci_low'])}-{_pct(sens['ci_high'])}) | "
                    f"{_pct(spec['value'])} ({_pct(spec['ci_low'])}-{_pct(spec['ci_high'])}) | {held} |"
                )
    if not rows:
        return []
    conf = next(iter(eval_metrics.values())).get("confidence", 0.95)
    return [
        f"**Table {table_number}. Operating points.** Each threshold is set on the validation split where the "
        f"one-sided {conf:.0%} lower confidence bound of the target rate (exact, from the validation images of "
        "the target's class) reaches the target, so that it holds for new images of the validation population "
        "with that confidence, not only on the validation images; a target that validation has too few images "
        "of the class to support gets no threshold. The internal test and each external set are scored at the "
        f'thresholds (sensitivity and specificity in %, {conf:.0%} bootstrap CIs). "Held": the target is still '
        "reached there.",
        "",
        "| Model | Target (validation) | Threshold | Set | Sensitivity % | Specificity % | Held |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
