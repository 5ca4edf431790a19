"""The names the params are checked against: threshold rules, metrics with a confidence interval,
selection metrics. Kept apart from ``cxr.metrics`` so that ``cxr.config`` (every stage) loads
without scipy and scikit-learn (about 2 s a stage)."""

THRESHOLD_METHODS = ("youden", "fixed", "midpoint")

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
SELECT_METRICS = {"val_auc": "higher", "val_loss": "lower"}
