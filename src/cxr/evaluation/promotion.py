"""The Model Registry's champion: register the selected model, move ``@champion`` only to a better one.

    outcome = register_candidate(tracker, "models/cnn", registered_name="cxr-pneumonia", alias="champion",
                                 select_metric="val_auc", value=0.905, report=eval_report,
                                 lock_path=root / ".dvc/tmp/cxr-champion.lock")
    print(outcome.message)

A checkpoint is registered once (a version, with its description and tags; the same bytes again are that
version, tag ``checkpoint_sha256``). The alias moves when
there is no champion yet, or when the candidate is better on validation (``cxr.metrics.is_better``)
than the champion *on the same data version*; a champion trained on other data is not comparable
and stays, unless ``promote="always"``. Reading the champion and moving the alias happen under an
exclusive file lock, so queued DVC experiments finishing together cannot both win. Against a tracking server they
happen under a lock in the registry too (:mod:`cxr.evaluation.registry_lock`): two people's compare
stages, on two machines, cannot both win either. The version's
source is the pyfunc model logged into the *training* run (without reopening it: the run keeps its status
and duration), so the run page shows its registered model. A compare stage whose ``dvc`` was killed while it
waited for the lock registers nothing (:func:`cxr.processes.orphaned`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cxr import processes
from cxr.checkpoint import ModelCard
from cxr.evaluation.registry_lock import registry_lock
from cxr.locks import locked
from cxr.metrics import is_better
from cxr.stage import StageInterrupted

PROMOTE_RULES = ("better", "always")


class RegistryError(RuntimeError):
    """Registration was asked for (compare.register) and could not happen."""


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    promoted: bool
    message: str  # what happened, in one sentence, for the stage log
    source: str


def decide(candidate: dict, champion: dict | None, metric: str, promote: str = "better") -> tuple[bool, str]:
    """Whether ``candidate`` ({data_version, value}) replaces ``champion`` (the same keys, or None), and why."""
    if promote not in PROMOTE_RULES:
        raise ValueError(f"compare.promote: expected one of {list(PROMOTE_RULES)}, found {promote!r}")
    if champion is None:
        return True, "no champion yet"
    if promote == "always":
        return True, "compare.promote=always"
    if champion["data_version"] != candidate["data_version"]:
        return False, (
            f"the champion was trained on data version {champion['data_version']}, this model on "
            f"{candidate['data_version']}: not comparable (-S compare.promote=always replaces it)"
        )
    new, old = candidate["value"], champion["value"]
    if is_better(new, old, metric):
        return True, f"{metric} {new:.4f} beats the champion's {old:.4f}"
    return False, f"{metric} {new:.4f} does not beat the champion's {old:.4f}"


REGISTERED_DESCRIPTION = (
    "Pediatric chest X-ray classifier: P(PNEUMONIA) from one frontal radiograph, PNEUMONIA at or above the "
    "threshold chosen on validation (each version's description and `threshold` tag). Versions are "
    "registered by the pipeline's compare stage, one per run, with their test and external results; "
    "@champion is the best on validation for its data version (compare.promote). Models trained on the "
    "synthetic default demonstrate the pipeline, not medicine."
)


def _champion(client, name: str, alias: str, metric: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # No such model (RESOURCE_DOES_NOT_EXIST) or alias (INVALID_PARAMETER_VALUE) yet. Anything else (a
        # timeout, the store failing) is no answer: taking it for "no champion" would promote a worse model.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    value = mv.tags.get(metric)
    return {
        "version": mv.version,
        "data_version": mv.tags.get("data_version", ""),
        "value": float(value) if value not in (None, "") else math.nan,
    }


def register_candidate(
    tracker,
    checkpoint_dir: str | Path,
    *,
    registered_name: str,
    alias: str,
    select_metric: str,
    value: float,
    report: dict,
    lock_path: Path,
    promote: str = "better",
) -> Outcome:
    """Register the pyfunc model of ``checkpoint_dir`` (once: a checkpoint already registered is that version)
    and move ``alias`` if :func:`decide` says so. ``value``: its validation ``select_metric``; ``report``: its
    evaluate metrics (for the description)."""
    if not getattr(tracker, "active", False):
        raise RegistryError(
            f"compare.register is true but the MLflow tracking store is unreachable "
            f"({getattr(tracker, 'uri', 'no tracking URI')}); start it, or run with "
            f"-S compare.register=false"
        )
    from mlflow import MlflowClient

    from cxr.checkpoint import load_card

    card = load_card(checkpoint_dir)
    # compare's name for it (cnn, resnet_small-tuned); card.name is the architecture
    candidate = Path(checkpoint_dir).name
    client = MlflowClient(tracking_uri=tracker.uri)
    digest = checkpoint_digest(checkpoint_dir)
    try:
        # the file lock: this machine's compare stages; the registry lock: everyone's on one server
        with locked(lock_path), registry_lock(client, registered_name, tracker.uri):
            if why_not := processes.orphaned():  # waited here while its dvc was killed: nobody wants this any more
                raise StageInterrupted(why_not)
            champion = _champion(client, registered_name, alias, select_metric)
            promoted, why = decide(
                {"data_version": card.data_version, "value": value}, champion, select_metric, promote
            )
            mv = _version_of(client, registered_name, digest)
            new = mv is None
            if new:
                mv = _register(tracker, client, checkpoint_dir, card, registered_name, report, select_metric, value)
            if promoted:
                client.set_registered_model_alias(registered_name, alias, mv.version)
    except Exception as exc:
        raise RegistryError(
            f"could not register {candidate!r} as {registered_name!r} in MLflow at {tracker.uri} "
            f"({exc.__class__.__name__}: {exc}); fix the store, or -S compare.register=false"
        ) from exc
    where = f"{registered_name} version {mv.version}" + ("" if new else " (already registered: the same checkpoint)")
    if promoted:
        message = f"registered {candidate} as {where} and moved @{alias} to it: {why}"
    else:
        kept = (champion or {}).get("version")
        message = f"registered {candidate} as {where}; @{alias} stays at version {kept}: {why}"
    return Outcome(name=registered_name, version=str(mv.version), promoted=promoted, message=message, source=mv.source)


CHECKPOINT_TAG = "checkpoint_sha256"  # the version's tag naming its checkpoint's bytes (model.pt + model.json)


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """sha256 of the checkpoint's weights and card, the bytes that make it this model."""
    import hashlib

    from cxr.checkpoint import META_FILE, WEIGHTS_FILE

    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, META_FILE):
        with open(Path(checkpoint_dir) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _version_of(client, name: str, digest: str):
    """The version of ``name`` registered from the checkpoint of ``digest``, or None."""
    versions = client.search_model_versions(f"name = '{name}' and tags.{CHECKPOINT_TAG} = '{digest}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _register(tracker, client, checkpoint_dir, card: ModelCard, name: str, report: dict, select_metric, value):
    """A new version of ``name``: the pyfunc model logged into the checkpoint's training run (found by
    :func:`find_training_run`, else compare's run) without reopening it, then registered with its tags."""
    import mlflow

    from cxr.evaluation.evaluate import find_training_run
    from cxr.serving.pyfunc import log_pyfunc_model

    candidate = Path(checkpoint_dir).name
    training_run_id = find_training_run(tracker, card)
    mlflow.set_tracking_uri(tracker.uri)
    uri = log_pyfunc_model(checkpoint_dir, name=f"{candidate}-pyfunc", run_id=training_run_id or tracker.run_id)
    tags = {
        "model": candidate,
        "architecture": card.name,
        "data_version": card.data_version,
        "data_source": card.data_source.kind,  # synthetic | folder | archive | url | ... (the card's data_source)
        select_metric: f"{value:.6f}",
        "threshold": f"{card.threshold:.6f}",
        "training_run_id": training_run_id or "",
        CHECKPOINT_TAG: checkpoint_digest(checkpoint_dir),
    }
    mv = mlflow.register_model(uri.model_uri, name, tags=tags)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=REGISTERED_DESCRIPTION)
    client.update_model_version(name, mv.version, description=describe(candidate, card, report, select_metric, value))
    if training_run_id:
        client.set_tag(training_run_id, "registered_model", f"{name}/{mv.version}")
    return mv


def describe(candidate: str, card: ModelCard, report: dict, select_metric: str, value: float) -> str:
    """The version's description: the data (its source and version), parameters, validation and test metrics
    with CIs, threshold."""
    at = report["at_val_threshold"]

    def ci(k: str, pct: bool = True) -> str:
        m, f = at[k], (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
        return f"{f(m['value'])} ({f(m['ci_low'])}-{f(m['ci_high'])}){' %' if pct else ''}"

    p = card.train_params
    params = ", ".join(
        f"{k}={p[k]}" for k in ("lr", "batch_size", "epochs", "image_size", "pretrained", "seed") if k in p
    )
    synthetic = " Not radiographs: its outputs on real chest X-rays mean nothing." if card.data_source.synthetic else ""
    name = candidate if candidate == card.name else f"{candidate} ({card.name})"
    return (
        f"{name} trained on {card.data_source.describe()}, data version {card.data_version}.{synthetic}\n"
        f"Selected on validation {select_metric} {value:.4f} "
        f"(epoch {card.best_epoch}); threshold {card.threshold:.4f} ({card.threshold_method}, on validation).\n"
        f"Test ({report.get('n', '?')} images, {report.get('confidence', 0.95):.0%} bootstrap CIs): "
        f"ROC-AUC {ci('roc_auc', False)}, accuracy {ci('accuracy')}, sensitivity {ci('sensitivity')}, "
        f"specificity {ci('specificity')}, balanced accuracy {ci('balanced_accuracy')}.\nParameters: {params}."
    )
