"""What the stages log through: MLflow behind a thin adapter, with a no-op twin; DVC files stay the source of truth.

    tracker = make_tracker("chest-xray-pneumonia")     # MlflowTracker, or NullTracker if the store is unreachable
    with tracker.start_run("cnn", tags={"model": "cnn"}):
        tracker.log_params({...}); tracker.log_metrics({"val_auc": 0.9}, step=1)

Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/mlflow.db`` where ``<root>`` is
``$DVC_ROOT`` (queued ``dvc exp run`` jobs run in temporary copies of the repository; DVC points
DVC_ROOT at the real one) or the git top level of the working directory. Experiments created here
keep artifacts in ``<root>/mlartifacts`` for the same reason. Browse with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``.

A tracking server that cannot be reached costs nothing but a warning: the tracker degrades to
:class:`NullTracker` and training carries on writing its DVC outputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr import processes
from cxr.metric_names import mlflow_metric_key, runs_view_tag
from cxr.run_context import artifact_location, tracking_uri
from cxr.signals import StageInterrupted, deferred_signals, signals_end_the_run

# Fail fast on an unreachable server: MLflow's defaults retry with backoff for minutes.
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


# MLflow's tag for "nested under": set directly when the parent run has ended (mlflow.start_run's
# parent_run_id wants an active parent), as evaluate does under the training run of its checkpoint.
PARENT_RUN_TAG = "mlflow.parentRunId"

SYSTEM_METRICS_INTERVAL_S = 2.0  # MLflow's default (10 s) gives a demo run of 20 s two points


# What the experiment holds, for MLflow 3's UI. In 3.17 the UI's GenAI / Model training switch (the URL's
# ?workflowType=machine_learning, or the browser's last choice) decides the landing page, not this tag.
# The experiment also carries a saved runs-table view (cxr.metric_names.RUNS_VIEW).
EXPERIMENT_TAGS = dict([("mlflow.experimentKind", "custom_model_development"), runs_view_tag()])


class Tracker:
    """What the pipeline logs through, each method a no-op here: :class:`MlflowTracker` overrides them, and
    :class:`NullTracker` is this as it is (tests, ranks other than 0, a store that cannot be reached)."""

    active = False
    uri: str | None = None  # the store (MlflowTracker): the run queries and the registry reach it there
    experiment_id: str | None = None

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: dict | None = None,
        nested: bool = False,
        system_metrics: bool = False,
        span: tuple[float, float] | None = None,
    ) -> Iterator[None]:
        yield None

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None, run_id: str | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...

    def log_dataset(self, name: str, source: str, digest: str, context: str) -> None: ...

    def log_model(
        self, model, *, input_example=None, signature=None, name: str = "model", image_size: int | None = None
    ) -> None: ...

    def set_tags(self, tags: dict) -> None: ...

    @property
    def run_id(self) -> str | None:
        return None


class NullTracker(Tracker):
    """The :class:`Tracker` that does nothing. For tests, sweeps without tracking, and degraded runs."""


class MlflowTracker(Tracker):
    """The MLflow :class:`Tracker`. Any MLflow failure warns once and turns the tracker into a no-op for the
    rest of the run."""

    active = True
    uri: str
    experiment_id: str

    def __init__(self, experiment: str, uri: str | None = None):
        import mlflow

        for k, v in _FAST_FAIL_ENV.items():
            os.environ.setdefault(k, v)
        self._mlflow = mlflow
        self.uri = uri or tracking_uri()
        self.experiment = experiment
        self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._ensure_experiment()  # the probe: raises if the store is unreachable
        self._run = None

    def _ensure_experiment(self) -> str:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            for key, value in EXPERIMENT_TAGS.items():
                if exp.tags.get(key) != value:  # made before the tag, or by hand
                    try:
                        self._client.set_experiment_tag(exp.experiment_id, key, value)
                    except self._mlflow.MlflowException as exc:  # a user who may not edit it still logs runs
                        warnings.warn(f"MLflow: could not tag the experiment with {key}: {exc}", stacklevel=2)
            return exp.experiment_id
        # Local stores: artifacts next to the store in the real repository, not in a temporary exp copy.
        # A remote server manages its own artifact store.
        location = None if self.uri.startswith(("http://", "https://", "databricks")) else artifact_location()
        try:
            return self._client.create_experiment(self.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:
            exp = self._client.get_experiment_by_name(self.experiment)  # created by a parallel queued job
            if exp is None:
                raise
            return exp.experiment_id

    def _degrade(self, what: str, exc: Exception) -> None:
        warnings.warn(
            f"MLflow tracking disabled after a failure in {what} ({exc.__class__.__name__}: {exc}); "
            f"training continues and DVC outputs are written as usual.",
            RuntimeWarning,
            stacklevel=3,
        )
        self.active = False

    def _safe(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.active:
            return None
        try:
            with deferred_signals():
                return fn(*args, **kwargs)
        except Exception as exc:  # a tracking outage must never cost the training
            self._degrade(what, exc)
            return None

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run is not None else None

    @contextlib.contextmanager
    def start_run(
        self,
        run_name: str,
        tags: dict | None = None,
        nested: bool = False,
        system_metrics: bool = False,
        span: tuple[float, float] | None = None,
    ) -> Iterator[Any]:
        """A run; ``system_metrics``: MLflow samples CPU, memory (and GPU, with pynvml) every
        SYSTEM_METRICS_INTERVAL_S seconds into system/* metrics while it lasts (training runs). ``span``: the
        (start, end) wall times, in seconds since the epoch, of work done before the run is logged (a sweep's
        configuration, trained in this or another process): the run starts and ends at them."""
        mlflow = self._mlflow
        run = None
        if self.active:
            try:
                mlflow.set_tracking_uri(self.uri)
                if not nested:
                    with deferred_signals():
                        self._end_orphaned_runs()
                if system_metrics:
                    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
                run_tags = {k: str(v) for k, v in {**(tags or {}), **processes.tags()}.items()}
                if span is not None:  # made with its start time, then continued (mlflow.start_run takes none)
                    parent = mlflow.active_run() if nested else None
                    run_tags.update({PARENT_RUN_TAG: parent.info.run_id} if parent else {})
                    made = self._client.create_run(self.experiment_id, int(span[0] * 1000), run_tags, run_name)
                    run = mlflow.start_run(run_id=made.info.run_id, nested=nested)
                else:
                    run = mlflow.start_run(
                        run_name=run_name,
                        experiment_id=self.experiment_id,
                        tags=run_tags,
                        nested=nested,
                        log_system_metrics=system_metrics,
                    )
            except Exception as exc:
                self._degrade("start_run", exc)
        previous, self._run = self._run, run
        status = "FINISHED"
        try:
            with contextlib.nullcontext() if nested else signals_end_the_run():
                yield run
        except (KeyboardInterrupt, StageInterrupted):
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._run = previous
            if run is not None:
                # Ended even after a failure disabled this tracker: a run left active in the process
                # would capture the next one (a sweep's next configuration, the next stage in-process).
                try:
                    with deferred_signals():
                        mlflow.end_run(status=status if self.active else "FAILED")
                        if span is not None and self.active:
                            self._client.set_terminated(run.info.run_id, status, end_time=int(span[1] * 1000))
                except Exception:  # the store is gone; nothing more to tell it
                    pass

    def _end_orphaned_runs(self) -> None:
        """Mark KILLED the RUNNING runs of this experiment whose process (its ``process`` tag) has ended on
        this host: a stage killed with -9, or whose ``dvc`` was, could not end its own."""
        where = f"tags.host = '{processes.HOST}' and attributes.status = 'RUNNING'"
        runs = self._client.search_runs([self.experiment_id], where, max_results=1000)
        gone = [r for r in runs if processes.alive(r.data.tags.get("process", "")) is False]
        for r in gone:
            self._client.set_terminated(r.info.run_id, status="KILLED")
        if gone:
            names = ", ".join(repr(r.info.run_name) for r in gone[:5]) + (" ..." if len(gone) > 5 else "")
            print(f"[mlflow] marked KILLED {len(gone)} run(s) whose process had ended: {names}", file=sys.stderr)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        # MlflowClient with an explicit run id: works in nested runs and never logs to the wrong run.
        if self.run_id:
            self._safe(
                "log_params", self._client.log_batch, self.run_id, params=[Param(k, str(v)) for k, v in params.items()]
            )

    def log_metrics(self, metrics: dict, step: int | None = None, run_id: str | None = None) -> None:
        """Into the current run, or ``run_id`` (a finished training run: its test results beside its params).
        With a ``step``, the points of a per-epoch curve: :func:`mlflow_metric_key` names them (``epoch/val_auc``)."""
        import math
        import time

        from mlflow.entities import Metric

        run_id = run_id or self.run_id
        if not run_id:
            return
        now = int(time.time() * 1000)
        items = [
            Metric(mlflow_metric_key(k, step), float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        self._safe("log_metrics", self._client.log_batch, run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        if self.run_id:
            self._safe(
                "set_tags", self._client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self._safe("log_artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Numbers that belong together (a metric with its CI, per set) as one table artifact, which the
        UI shows as a table, instead of a chart each."""
        if self.run_id:
            import pandas as pd

            self._safe("log_table", self._client.log_table, self.run_id, pd.DataFrame(rows), artifact_file)

    def log_dataset(self, name: str, source: str, digest: str, context: str) -> None:
        """A dataset input of the run (the run page's Datasets, the runs table's Dataset column): ``source``
        the DVC path, ``digest`` the DVC data version, so runs on other data show other digests."""
        if not self.run_id:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        def log(run_id: str) -> None:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local-file sources
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(source)
            ds = MetaDataset(src, name=name, digest=digest[:32] or "unknown")  # type: ignore[abstract]
            tags = [InputTag("mlflow.data.context", context)]
            self._client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags)])

        self._safe("log_dataset", log, self.run_id)

    def log_model(
        self, model, *, input_example=None, signature=None, name: str = "model", image_size: int | None = None
    ) -> None:
        """``mlflow.pytorch.log_model`` with a float-tensor input signature (B, 3, H, W) -> (B, 1)."""
        if not self.run_id:
            return
        self._safe("log_model", self._log_model, model, input_example, signature, name, image_size)

    def _log_model(self, model, input_example, signature, name, image_size):
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        if signature is None:
            side = -1 if image_size is None else int(image_size)
            signature = ModelSignature(
                inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, side, side), "image")]),
                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "logit")]),
            )
        model = getattr(model, "_orig_mod", model).to("cpu").eval()
        # Explicit requirements: MLflow's inference would reload the model in a subprocess (slow).
        import torchvision

        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        from importlib.metadata import version

        from cxr.models import get_entry, model_arch

        reqs += [f"{pkg}=={version(pkg)}" for pkg in get_entry(model_arch(model)["name"]).requirements]
        if input_example is None and image_size is not None:
            input_example = np.zeros((2, 3, int(image_size), int(image_size)), dtype=np.float32)
        mlflow.set_tracking_uri(self.uri)
        with contextlib.ExitStack() as stack:
            active = self._mlflow.active_run()
            if active is None or active.info.run_id != self.run_id:
                stack.enter_context(self._mlflow.start_run(run_id=self.run_id))
            kwargs = dict(name=name, signature=signature, input_example=input_example, pip_requirements=reqs)
            # MLflow re-validates the example as a JSON serving payload, which its PyTorch flavour cannot
            # take for 4-D tensors, and logs a page-long warning; the signature above is what matters.
            stack.enter_context(_quiet_logger("mlflow.models.model"))
            try:
                # pt2 (torch.export): a traced graph, loadable without this package's classes or pickle.
                if input_example is None:
                    raise ValueError("pt2 needs an input example")
                mlflow.pytorch.log_model(model, serialization_format="pt2", **kwargs)
            except Exception as exc:
                warnings.warn(
                    f"MLflow pt2 export of the model failed ({exc.__class__.__name__}); logging it pickled instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
                mlflow.pytorch.log_model(model, serialization_format="pickle", **kwargs)


@contextlib.contextmanager
def _quiet_logger(name: str):
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def make_tracker(experiment: str, uri: str | None = None, enabled: bool = True) -> Tracker:
    """An MlflowTracker, or a NullTracker (with one warning) when the store cannot be reached."""
    if not enabled:
        return NullTracker()
    uri = uri or tracking_uri()
    try:
        return MlflowTracker(experiment, uri)
    except Exception as exc:
        warnings.warn(
            f"MLflow tracking store {uri} is unreachable ({exc.__class__.__name__}: {str(exc)[:200]}); "
            f"continuing without MLflow. Metrics, plots and the model are still written for DVC. "
            f"Fix: start the server, or unset MLFLOW_TRACKING_URI to use the local sqlite store.",
            RuntimeWarning,
            stacklevel=2,
        )
        return NullTracker()
