"""The MLflow Model Registry, as the compare stage and ``cxr predict`` use it.

    registry = Registry(tracker.uri)
    with registry.lock("cxr-pneumonia"):                # across machines on a tracking server (registry_lock)
        champion = registry.champion("cxr-pneumonia", "champion", "val_auc")   # dict, or None
        mv = registry.version_of("cxr-pneumonia", "checkpoint_sha256", digest) or registry.register(model_uri, ...)
        registry.set_alias("cxr-pneumonia", "champion", mv.version)
    folder = download_model("models:/cxr-pneumonia@champion", dest, progress=True)

What to register and when to move the alias is the compare stage's decision (:mod:`cxr.evaluation.promotion`).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from cxr.run_context import tracking_uri
from cxr.tracking.registry_lock import registry_lock

# A lookup that found nothing: no such model (RESOURCE_DOES_NOT_EXIST) or alias (INVALID_PARAMETER_VALUE).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class Registry:
    """One tracking store's Model Registry."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def lock(self, name: str) -> contextlib.AbstractContextManager[str | None]:
        """:func:`cxr.tracking.registry_lock.registry_lock` on ``name`` (a no-op for a local store)."""
        return registry_lock(self.client, name, self.uri)

    def champion(self, name: str, alias: str, metric: str) -> dict | None:
        """``{"version", "data_version", "value"}`` of ``name@alias`` (its ``metric`` tag), or None when there is
        no such model or alias yet. Any other failure (a timeout, the store failing) raises: taking it for "no
        champion" would promote a worse model."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                return None
            raise
        value = mv.tags.get(metric)
        return {
            "version": mv.version,
            "data_version": mv.tags.get("data_version", ""),
            "value": float(value) if value not in (None, "") else math.nan,
        }

    def version_of(self, name: str, tag: str, value: str):
        """The first version of ``name`` tagged ``tag=value`` (a checkpoint's digest), or None."""
        versions = self.client.search_model_versions(f"name = '{name}' and tags.{tag} = '{value}'")
        return min(versions, key=lambda v: int(v.version)) if versions else None

    def register(self, model_uri: str, name: str, *, tags: dict, description: str, model_description: str):
        """A new version of ``name`` from the logged model ``model_uri``, with its tags and description; the
        registered model gets ``model_description`` when it has none."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mv = mlflow.register_model(model_uri, name, tags=tags)
        if not self.client.get_registered_model(name).description:
            self.client.update_registered_model(name, description=model_description)
        self.client.update_model_version(name, mv.version, description=description)
        return mv

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def tag_run(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)


def download_model(uri: str, dest: Path, progress: bool) -> Path:
    """Download ``uri`` (``models:/...``, ``runs:/...``) from this project's tracking store into ``dest``, with
    MLflow's download bar only when ``progress``; the local path. Raises what MLflow raises."""
    import mlflow

    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true" if progress else "false"
    try:
        mlflow.set_tracking_uri(tracking_uri())
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def version_name(uri: str) -> str:
    """``<name> version <N> (<uri>)`` for ``models:/<name>@<alias>`` or ``models:/<name>/<N>``; the URI itself
    for anything else (``runs:/``, or a registry that cannot say)."""
    ref = uri.removeprefix("models:/")
    if ref == uri:
        return uri
    try:
        client = Registry(tracking_uri()).client
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, version = ref.partition("/")
            version = client.get_model_version(name, version).version
    except Exception:  # the download said what is wrong with the store; the URI names the model well enough
        return uri
    return f"{name} version {version} ({uri})"
