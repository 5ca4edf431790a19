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
happen under a lock in the registry too (:mod:`cxr.tracking.registry_lock`): two people's compare
stages, on two machines, cannot both win either. The version's
source is the pyfunc model logged into the *training* run (without reopening it: the run keeps its status
and duration), so the run page shows its registered model. A compare stage whose ``dvc`` was killed while it
waited for the lock registers nothing (:func:`cxr.processes.orphaned`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr import processes
from cxr.checkpoint import ModelCard
from cxr.locks import locked
from cxr.metrics import is_better
from cxr.stage import StageInterrupted
from cxr.tracking import Tracker
from cxr.tracking.registry import Registry
from cxr.tracking.runs import find_training_run

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


def register_candidate(
    tracker: Tracker,
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
    if not tracker.active or not tracker.uri:
        raise RegistryError(
            f"compare.register is true but the MLflow tracking store is unreachable "
            f"({tracker.uri or 'no tracking URI'}); start it, or run with "
            f"-S compare.register=false"
        )
    from cxr.checkpoint import load_card

    card = load_card(checkpoint_dir)
    # compare's name for it (cnn, resnet_small-tuned); card.name is the architecture
    candidate = Path(checkpoint_dir).name
    digest = checkpoint_digest(checkpoint_dir)
    try:
        registry = Registry(tracker.uri)
        # the file lock: this machine's compare stages; the registry lock: everyone's on one server
        with locked(lock_path), registry.lock(registered_name):
            if why_not := processes.orphaned():  # waited here while its dvc was killed: nobody wants this any more
                raise StageInterrupted(why_not)
            champion = registry.champion(registered_name, alias, select_metric)
            promoted, why = decide(
                {"data_version": card.data_version, "value": value}, champion, select_metric, promote
            )
            mv = registry.version_of(registered_name, CHECKPOINT_TAG, digest)
            new = mv is None
            if new:
                mv = _register(
                    tracker, registry, checkpoint_dir, digest, card, registered_name, report, select_metric, value
                )
            if promoted:
                registry.set_alias(registered_name, alias, mv.version)
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


def _register(
    tracker: Tracker,
    registry: Registry,
    checkpoint_dir,
    digest: str,
    card: ModelCard,
    name,
    report,
    select_metric,
    value,
):
    """A new version of ``name``: the pyfunc model logged into the checkpoint's training run (found by
    :func:`cxr.tracking.runs.find_training_run`, else compare's run) without reopening it, then registered with
    its tags."""
    from cxr.serving.pyfunc import log_pyfunc_model

    candidate = Path(checkpoint_dir).name
    training = find_training_run(tracker, card)
    training_run_id = training.run_id if training else None
    info = log_pyfunc_model(
        checkpoint_dir, name=f"{candidate}-pyfunc", run_id=training_run_id or tracker.run_id, tracking_uri=registry.uri
    )
    tags = {
        "model": candidate,
        "architecture": card.name,
        "data_version": card.data_version,
        "data_source": card.data_source.kind,  # synthetic | folder | archive | url | ... (the card's data_source)
        select_metric: f"{value:.6f}",
        "threshold": f"{card.threshold:.6f}",
        "training_run_id": training_run_id or "",
        CHECKPOINT_TAG: digest,
    }
    mv = registry.register(
        info.model_uri,
        name,
        tags=tags,
        description=describe(candidate, card, report, select_metric, value),
        model_description=REGISTERED_DESCRIPTION,
    )
    if training_run_id:
        registry.tag_run(training_run_id, "registered_model", f"{name}/{mv.version}")
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
