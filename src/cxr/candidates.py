"""Candidate names: the models of params.yaml's ``models:`` and the sweep's kept ``<model>-tuned``.

Torch-free: compare's tables and messages use it without loading a model.
"""

from __future__ import annotations

# The sweep's selected configuration, kept as a model of its own: "<model>-tuned" (models/<model>-tuned,
# evaluate_tuned@<model>-tuned, a candidate of compare beside the models of params.yaml).
TUNED_SUFFIX = "-tuned"


def tuned_name(model: str) -> str:
    return f"{model}{TUNED_SUFFIX}"


def architecture_of(candidate: str) -> str:
    """The registry name of a candidate: ``resnet50-tuned`` -> ``resnet50``; a model's own name unchanged."""
    return candidate.removesuffix(TUNED_SUFFIX)


def evaluate_stage(candidate: str) -> str:
    """The DVC stage that evaluates ``candidate``: ``evaluate@cnn``, ``evaluate_tuned@resnet50-tuned``."""
    return f"{'evaluate_tuned' if candidate.endswith(TUNED_SUFFIX) else 'evaluate'}@{candidate}"


def is_tuned(candidate: str) -> bool:
    """Whether ``candidate`` is the sweep's kept configuration (its validation score is the best of several)."""
    return candidate.endswith(TUNED_SUFFIX)
