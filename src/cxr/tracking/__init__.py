"""MLflow behind one door: the only package of ``cxr`` that imports ``mlflow``, with the served model's pyfunc
module (:mod:`cxr.serving.pyfunc`).

- :mod:`~cxr.tracking.tracker`: what the stages log through (:class:`Tracker`, its no-op methods the
  :class:`NullTracker`; :class:`MlflowTracker`; :func:`make_tracker`).
- :mod:`~cxr.tracking.runs`: questions about logged runs (the run that trained a checkpoint).
- :mod:`~cxr.tracking.registry`: the Model Registry (a champion, versions, aliases; fetching a registered
  model) and :mod:`~cxr.tracking.registry_lock`, promotions serialised across machines.

Where runs go and what they are called, without importing MLflow: :mod:`cxr.run_context`.
"""

from cxr.tracking.tracker import (
    EXPERIMENT_TAGS,
    PARENT_RUN_TAG,
    MlflowTracker,
    NullTracker,
    Tracker,
    make_tracker,
)

__all__ = ["EXPERIMENT_TAGS", "PARENT_RUN_TAG", "MlflowTracker", "NullTracker", "Tracker", "make_tracker"]
