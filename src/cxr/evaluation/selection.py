"""Which candidate compare selects, on validation only, and why, when validation cannot tell the best apart.

    sel = select_candidate(train_metrics, "val_auc", validation=read_validation("eval", models), n_configs=...)
    sel.selected, sel.leader, sel.tied, sel.rule     # compare registers sel.selected and lists it first
    selection_markdown(sel)                          # the report's paragraph

The leader is the candidate with the best validation metric (:func:`cxr.evaluation.compare.select_best`). On a
small validation split several candidates reach the same ROC-AUC (1.000 on 62 images), and an exact tie broken
by the other metric picks a winner the data do not support. So every other candidate is compared with the
leader on the same validation images (paired stratified bootstrap of the ROC-AUC difference,
:func:`cxr.evaluation.paired.paired_auc_difference`); those whose interval includes 0 are tied with it, and
among the tied the documented preference :data:`PREFERENCE` decides: a model of params.yaml, trained in full,
before the sweep's kept configuration, whose validation score is the best of the sweep's configurations on the
same images and so biased upward (a winner's curse); then the validation metric, as before. The test split is
not read here: the report then shows each candidate's test result, on data that chose nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxr.candidates import is_tuned
from cxr.evaluation.paired import PairingError, pair_images, paired_auc_difference, prediction_rows

VALIDATION_FILE = "validation.csv"  # evaluate's per-image validation predictions: path, label, probability
PREFERENCE = (
    "among candidates that validation cannot tell apart, a model of params.yaml (trained in full) before the "
    "sweep's kept configuration (the best of its configurations on the same validation images, so its score is "
    "biased upward), then the better validation metric"
)


@dataclass
class Selection:
    selected: str
    leader: str  # the best validation metric, before the tie rule
    metric: str
    tied: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> its paired difference vs leader
    n_val: int = 0
    n_configs: dict[str, int] = field(default_factory=dict)  # a tuned candidate -> the sweep's configurations

    @property
    def rule(self) -> str:
        """What decided: the validation metric alone, or the tie preference."""
        return "tie preference" if self.tied else self.metric

    def as_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "leader": self.leader,
            "metric": self.metric,
            "rule": self.rule,
            "tied_with_leader": self.tied,
            "n_val": self.n_val,
            "n_configs": self.n_configs,
        }


def read_validation(folder: str | Path, models: list[str]) -> dict[str, tuple[str, pd.DataFrame]]:
    """model -> (file, rows: path, y, p) of evaluate's validation predictions; a model without the file is left
    out (with a warning: its ties cannot be tested)."""
    out = {}
    for m in models:
        path = Path(folder) / m / VALIDATION_FILE
        if not path.is_file():
            warnings.warn(f"compare: {path} is missing: {m}'s tie with the leader is not tested", stacklevel=2)
            continue
        out[m] = (str(path), prediction_rows(pd.read_csv(path, dtype={"path": str}), str(path), m))
    return out


def select_candidate(
    train_metrics: dict[str, dict],
    metric: str,
    validation: dict[str, tuple[str, pd.DataFrame]] | None = None,
    *,
    n_configs: dict[str, int] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Selection:
    """The leader on ``metric``; with ``validation`` predictions, the candidates tied with it and the one
    :data:`PREFERENCE` selects among them (see the module)."""
    from cxr.evaluation.compare import select_best

    leader = select_best(train_metrics, metric)
    sel = Selection(selected=leader, leader=leader, metric=metric, n_configs=dict(n_configs or {}))
    validation = validation or {}
    if leader not in validation:
        return sel
    for m in train_metrics:
        if m == leader or m not in validation:
            continue
        try:
            y, p_lead, p_m = pair_images(validation[leader], validation[m])
        except PairingError as exc:  # not the same validation images: not comparable, so not tied
            warnings.warn(f"compare: {exc}", stacklevel=2)
            continue
        d = paired_auc_difference(y, p_lead, p_m, n_resamples=n_resamples, seed=seed, confidence=confidence)
        sel.n_val = len(y)
        if d["ci_low"] <= 0 <= d["ci_high"]:
            sel.tied[m] = {k: d[k] for k in ("difference", "ci_low", "ci_high")}
    if sel.tied:
        group = {m: train_metrics[m] for m in [leader, *sel.tied]}
        preferred = {m: v for m, v in group.items() if not is_tuned(m)} or group
        sel.selected = select_best(preferred, metric)
    return sel


def selection_markdown(sel: Selection, conf: float = 0.95) -> list[str]:
    """The report's paragraph on how the selected model was chosen: the tie, its rule, the tuned candidate."""
    lines = []
    if sel.tied:
        others = ", ".join(
            f"{m} ({v['difference']:+.3f}, {v['ci_low']:+.3f} to {v['ci_high']:+.3f})" for m, v in sel.tied.items()
        )
        lines.append(
            f"**Selection.** On the {sel.n_val} validation images, {sel.leader} has the best {sel.metric}, but "
            f"validation cannot tell it apart from {others} (paired bootstrap of the validation ROC-AUC difference "
            f"against {sel.leader}, {conf:.0%} CI including 0). The rule that decided: {PREFERENCE}. Selected: "
            f"**{sel.selected}**."
        )
    for m, n in sel.n_configs.items():
        lines.append(
            f"{m}'s validation score is the best of the sweep's {n} configurations, each scored on the same "
            "validation images that then ranked it against the other models: it is optimistic, and "
            + (
                "the tie rule above sets it behind the fully trained models; "
                if sel.tied and m in [sel.leader, *sel.tied] and m != sel.selected
                else ""
            )
            + "its test row (evaluate_tuned, data that chose nothing) is the check."
        )
    return [*(f"{line}\n" for line in lines)] if lines else []
