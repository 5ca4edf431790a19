"""The choices made on the validation split as one public object: temperature, threshold, refer band, operating points.

    policy = ValidationPolicy.from_params(params)       # train.calibrate; evaluate: threshold, refer, operating points
    choices = policy.decide(val_labels, val_raw_probs)   # ValidationChoices, all four together
    choices.threshold, choices.temperature, choices.refer_band, choices.operating_points
    ModelCard(..., **choices.card_fields())                 # stored whole in the model card
    operating_threshold(card, "sensitivity-95")             # a stored operating point, by name (predict, serving)

In order: a temperature fitted on the raw validation probabilities (``train.calibrate``, cxr.calibration);
then, on the calibrated ones, as evaluate, ``cxr predict`` and the served model see them, the decision
threshold (``evaluate.threshold``, cxr.metrics.choose_threshold), the refer band (``evaluate.refer``,
cxr.abstention) and the operating points' thresholds (``evaluate.operating_points``,
cxr.evaluation.operating). The band and the operating points are chosen with the validation sample size in
mind, at the one-sided level ``evaluate.confidence``: where a class has too few validation images for a
target, the choice is recorded as missing, with how many images it needs, never as an edge of the sample.

Train (``fit``, once the epoch is kept) and the sweep (each configuration) decide; the card carries the
result (``validation``: the policy and the operating points; the threshold, temperature and band in their
own fields), so evaluate, ``cxr predict``, the served model and benchmarks/set_a_clinical.py read the same
choices instead of making them again. torch-free; scikit-learn and scipy load only when :meth:`decide` runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
from pydantic import ConfigDict, Field

from cxr.abstention import choose_refer_band
from cxr.calibration import apply_temperature, decide_temperature
from cxr.config import EvaluateConfig, OperatingTarget, TrainConfig, section
from cxr.metric_names import ThresholdMethod
from cxr.schema import Section

# scikit-learn and scipy load when a choice is made, not with the params (check_params, the start of train)
if TYPE_CHECKING:
    from cxr.checkpoint import ModelCard
    from cxr.evaluation.operating import OperatingThreshold


class ValidationPolicy(Section):
    """How each choice is made on validation. Frozen; :meth:`from_params` reads params.yaml's keys."""

    model_config = ConfigDict(frozen=True)

    threshold: ThresholdMethod = "youden"  # evaluate.threshold
    fixed_threshold: float = Field(0.5, gt=0, lt=1)  # evaluate.fixed_threshold
    calibrate: Union[bool, Literal["auto"]] = False  # train.calibrate
    refer_target: float | None = Field(None, gt=0, lt=0.5)  # evaluate.refer.target_error; None: no band
    operating_points: list[OperatingTarget] = Field(default_factory=list)  # evaluate.operating_points
    confidence: float = Field(0.95, gt=0, lt=1)  # evaluate.confidence: the one-sided level of the band and the points

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ValidationPolicy:
        t: TrainConfig = section(params, "train", TrainConfig)
        e: EvaluateConfig = section(params, "evaluate", EvaluateConfig)
        return cls(
            threshold=e.threshold,
            fixed_threshold=e.fixed_threshold,
            calibrate=t.calibrate,
            refer_target=e.refer.target_error,
            operating_points=list(e.operating_points),
            confidence=e.confidence,
        )

    def check(self, val_labels) -> None:
        """What the choices need of the validation labels, checked before training rather than after it."""
        classes = sorted(set(np.asarray(val_labels, dtype=np.int64).tolist()))
        if self.threshold != "fixed" and len(classes) < 2:
            raise ValueError(
                f"validation split has only class(es) {classes}: the {self.threshold} threshold "
                "needs both. Fix: a larger split.val_fraction, or `-S evaluate.threshold=fixed`."
            )

    def decide(self, labels, raw_probs) -> ValidationChoices:
        """Every choice on the validation ``labels`` and raw (uncalibrated) P(pneumonia) ``raw_probs``."""
        from cxr.evaluation.operating import choose_thresholds
        from cxr.metrics import choose_threshold

        y = np.asarray(labels).astype(int)
        calibration = decide_temperature(str(self.calibrate).lower(), y, raw_probs)
        probs = apply_temperature(raw_probs, calibration["temperature"])
        threshold = float(choose_threshold(y, probs, method=self.threshold, default=self.fixed_threshold))
        both = len(np.unique(y)) == 2  # a fixed threshold trains on one class: no band, no points then
        refer = {}
        if both and self.refer_target:
            refer = choose_refer_band(y, probs, threshold, self.refer_target, self.confidence)
        points = choose_thresholds(y, probs, self.operating_points, self.confidence) if both else []
        return ValidationChoices(
            policy=self,
            threshold=threshold,
            calibration=calibration,
            refer=refer,
            operating_points=points,
            n_normal=int((y == 0).sum()),
            n_pneumonia=int((y == 1).sum()),
            probs=probs,
        )


@dataclass(frozen=True)
class ValidationChoices:
    """What :meth:`ValidationPolicy.decide` chose; ``probs``: the calibrated validation probabilities."""

    policy: ValidationPolicy
    threshold: float
    calibration: dict[str, Any]
    refer: dict[str, Any]  # cxr.abstention's record: a band (low, high, ...), a status without one, or {} (none asked)
    operating_points: list[OperatingThreshold]
    n_normal: int
    n_pneumonia: int
    probs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])

    @property
    def refer_band(self) -> tuple[float, float] | None:
        return (float(self.refer["low"]), float(self.refer["high"])) if "low" in self.refer else None

    def card_fields(self) -> dict[str, Any]:
        """The model card's fields these choices fill (cxr.checkpoint.ModelCard)."""
        return {
            "threshold": self.threshold,
            "threshold_method": self.policy.threshold,
            "temperature": self.temperature,
            "calibration": self.calibration,
            "refer_band": self.refer_band,
            "refer": self.refer,
            "validation": {
                "policy": self.policy.model_dump(mode="json"),
                "n_normal": self.n_normal,
                "n_pneumonia": self.n_pneumonia,
                "operating_points": [point_record(p) for p in self.operating_points],
            },
        }


def point_record(point: OperatingThreshold) -> dict[str, Any]:
    """An operating point as the card keeps it: its name (``sensitivity-95``) and class beside its fields."""
    return {"name": point.name, "class": point.class_name, **asdict(point)}


def operating_threshold(card: ModelCard, name: str) -> float:
    """The threshold of ``card``'s operating point ``name`` (``sensitivity-95``), for ``cxr predict
    --operating-point`` and the served model; a ValueError that says why there is none."""
    points = {str(p.get("name")): p for p in card.operating_points()}
    if name not in points:
        known = ", ".join(points) or "none (a card older than format 6, or evaluate.operating_points empty)"
        raise ValueError(f"operating point {name!r} is not in the model card; it has: {known}")
    p = points[name]
    if p.get("threshold") is None:
        raise ValueError(
            f"operating point {name} has no threshold: validation had {p.get('n')} {p.get('class')} images, "
            f"a {100 * float(p['target']):g} % target needs at least {p.get('needs')} at "
            f"{100 * float(p.get('confidence') or 0.95):g} % confidence"
        )
    return float(p["threshold"])
