"""The names the params are checked against: threshold rules, metrics with a confidence interval,
selection metrics. Kept apart from ``cxr.metrics`` so that ``cxr.config`` (every stage) loads
without scipy and scikit-learn (about 2 s a stage)."""

from typing import Literal, get_args

ThresholdMethod = Literal["youden", "fixed", "midpoint"]  # how a decision threshold is chosen on validation
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)

# Metrics that get a confidence interval, in a fixed order (the bootstrap statistic returns this order).
CI_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
)

# Validation metrics a model, an epoch or a configuration is selected by, and which way is better.
SelectMetric = Literal["val_auc", "val_loss"]
SELECT_METRICS: dict[str, str] = dict(zip(get_args(SelectMetric), ("higher", "lower")))
