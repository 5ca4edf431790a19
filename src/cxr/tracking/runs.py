"""Questions about logged runs: which run trained a checkpoint, and in which DVC experiment.

run = find_training_run(tracker, card)   # TrainingRun(run_id=..., experiment="lr-bs"), or None
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cxr.checkpoint import ModelCard
from cxr.tracking.tracker import Tracker

RUN_STAGES = ("train", "sweep")  # the stages whose runs train checkpoints, in the order they are searched


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    experiment: str | None  # the DVC experiment it was logged in (its dvc_exp_name tag), None outside one


def find_training_run(tracker: Tracker, card: ModelCard) -> TrainingRun | None:
    """The MLflow run that trained this checkpoint, or None: the latest finished run tagged
    model=<architecture> whose data_version tag and logged params equal the card's; a train stage's run
    first, then a sweep configuration's (a ``<model>-tuned`` checkpoint is one). The card holds no run id:
    it would change its bytes. An outage or a deleted run warns and gives None."""
    if not (tracker.active and tracker.uri and tracker.experiment_id):
        return None
    from mlflow import MlflowClient

    from cxr.training.run_config import flat_params

    want = {k: str(v) for k, v in flat_params(card.train_params).items()}
    try:
        client = MlflowClient(tracking_uri=tracker.uri)
        for stage in RUN_STAGES:
            runs = client.search_runs(
                [tracker.experiment_id],
                filter_string=f"tags.model = '{card.name}' and tags.stage = '{stage}' "
                "and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=200,
            )
            for run in runs:
                if run.data.tags.get("data_version", card.data_version) != card.data_version:
                    continue
                if all(run.data.params.get(k) == v for k, v in want.items()):
                    return TrainingRun(run.info.run_id, run.data.tags.get("dvc_exp_name"))
    except Exception as exc:
        warnings.warn(
            f"could not look up the MLflow training run of {card.name!r} ({exc.__class__.__name__}: {exc})",
            RuntimeWarning,
            stacklevel=2,
        )
    return None
