"""The names the params are checked against (threshold rules, metrics with a confidence interval,
selection metrics), the MLflow key each logged metric takes and the runs-table view that shows them.
Kept apart from ``cxr.metrics`` so that ``cxr.config`` (every stage) loads without scipy and scikit-learn
(about 2 s a stage)."""

import json
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


# MLflow 3's run page and compare view chart "<section>/<name>" keys in sections, sorted, ahead of "Model metrics"
# (keys with no "/"), each alphabetically (runs-charts.types.ts, getBaseChartAndSectionConfigs). A value logged
# with a step (an epoch) is a point of a curve: "epoch/train_loss"..., then "timing/seconds"..., then the
# single values (best_epoch, test_*, threshold). Each chart keeps its name as title.
TIMINGS = frozenset({"seconds", "train_images_per_s"})  # MLflow only: never in a DVC file (cxr.files)


def mlflow_metric_key(name: str, step: int | None) -> str:
    """The MLflow key of metric ``name``: ``epoch/<name>`` or ``timing/<name>`` with a step, else ``name``."""
    return name if step is None else f"{'timing' if name in TIMINGS else 'epoch'}/{name}"


# A saved view of MLflow's runs table (3.17's "Views" menu; the UI reads it from an experiment tag): the
# training runs, each with its params beside the test results and threshold that evaluate logs into it, no
# nested run to expand. Link: #/experiments/<id>/runs?viewStateShareKey=models&workflowType=machine_learning
RUNS_VIEW = {
    "id": "models",
    "name": "Models: params beside test results",
    "filter": "tags.stage = 'train'",
    "params": ("lr", "batch_size", "epochs", "image_size"),
    "metrics": ("test_roc_auc", "test_sensitivity", "test_specificity", "threshold"),
}
_VIEW_CREATED_MS = 1_796_601_600_000  # a fixed date (2026-12-07): the same tag value in every store


def runs_view_tag() -> tuple[str, str]:
    """The experiment tag that holds :data:`RUNS_VIEW`: MLflow's saved-view envelope (name, createdAt, and the
    page state as a JSON string: search filter and the runs table's columns, keyed as the UI keys them)."""
    columns = [f"params.`{k}`" for k in RUNS_VIEW["params"]] + [f"metrics.`{k}`" for k in RUNS_VIEW["metrics"]]
    state = {"searchFilter": RUNS_VIEW["filter"], "selectedColumns": columns}
    envelope = {"name": RUNS_VIEW["name"], "createdAt": _VIEW_CREATED_MS, "state": json.dumps(state)}
    return f"mlflow.sharedViewState.{RUNS_VIEW['id']}", json.dumps(envelope)
