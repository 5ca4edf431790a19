"""The evaluation core: a trained model, the validation and test splits -> honest test metrics, tables, figures.

    model, card = checkpoint.load("models/cnn")
    result = evaluate_checkpoint(model, card, test=(images, labels, paths), cfg=EvaluateConfig())
    result.report            # metrics/eval/<model>.json: both thresholds, each metric with its bootstrap CI
    result.tables            # predictions, confusion, roc, pr, calibration DataFrames (DVC plot files)
    figs = evaluation_figures(result, model, card, test_images=..., val_images=...)

Run by ``src/evaluate.py`` (stage ``evaluate@<model>``). The decision threshold is the one saved in
the model card, chosen once at training on validation; metrics are reported at it and at 0.5. The
test split is predicted once and only scored. Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from cxr import CLASSES, plots
from cxr.checkpoint import ModelCard
from cxr.compare_figures import shift_roc_figure
from cxr.config import EvaluateConfig
from cxr.data.augment import BatchAugment, Normalize, eval_resize
from cxr.evaluation.operating import OperatingThreshold, score_operating_points
from cxr.evaluation.selective import calibration_report, refer_report, reliability_figure
from cxr.metrics import calibration_points, evaluate_predictions, pr_points, roc_points
from cxr.training.engine import predict_probabilities

HEADLINE_CI = ("roc_auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
# What the report repeats of the card's refer record beside the band's scores: how it was chosen, on what.
REFER_CARD_KEYS = ("target_error", "confidence", "alpha", "method", "n_normal", "n_pneumonia")


@dataclass
class EvalResult:
    model: str
    threshold: float
    threshold_method: str
    report: dict  # the DVC metrics file
    test_labels: np.ndarray = field(repr=False)
    test_probs: np.ndarray = field(repr=False)
    tables: dict[str, pd.DataFrame] = field(repr=False, default_factory=dict)
    raw_probs: np.ndarray | None = field(repr=False, default=None)  # before the card's temperature (None: not kept)
    temperature: float = 1.0

    @property
    def test_predicted(self) -> np.ndarray:
        return (self.test_probs >= self.threshold).astype(int)

    def flat_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """A short list for the MLflow UI: every metric at the model's threshold, CIs of the headline ones,
        the operating point at 0.5; the full report (all CIs, counts) is the logged metrics JSON."""
        at, default = self.report["at_val_threshold"], self.report["at_default_threshold"]
        out = {f"{prefix}threshold": self.threshold}
        for name, v in at.items():
            if isinstance(v, dict):
                out[f"{prefix}{name}"] = v["value"]
                if name in HEADLINE_CI:
                    out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = v["ci_low"], v["ci_high"]
        for name in ("accuracy", "sensitivity", "specificity"):
            out[f"{prefix}at_0.5_{name}"] = default[name]["value"]
        return out


def class_names(labels) -> list[str]:
    return [CLASSES[int(i)] for i in labels]


def predictions_table(paths, labels, probs, threshold: float) -> pd.DataFrame:
    """One row per test image: path, label, probability (P(pneumonia)), predicted (class names)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    if not len(paths) == len(labels) == len(probs):
        raise ValueError(f"{len(paths)} paths, {len(labels)} labels and {len(probs)} probabilities: lengths differ")
    return pd.DataFrame(
        {
            "path": list(paths),
            "label": class_names(labels),
            "probability": probs.round(6),
            "predicted": class_names(probs >= threshold),
        }
    )


def confusion_table(labels, predicted) -> pd.DataFrame:
    """DVC ``confusion`` template input: one row per image, actual and predicted class names."""
    return pd.DataFrame({"actual": class_names(labels), "predicted": class_names(predicted)})


def curve_tables(y, p) -> dict[str, pd.DataFrame]:
    """roc (fpr, tpr, threshold), pr (recall, precision, threshold),
    calibration (mean_predicted, fraction_positive, count)."""
    return {
        "roc": pd.DataFrame(roc_points(y, p)).round(6),
        "pr": pd.DataFrame(pr_points(y, p)).round(6),
        "calibration": pd.DataFrame(calibration_points(y, p)).round(6),
    }


def evaluate_probabilities(
    model_name: str,
    threshold: float,
    threshold_method: str,
    test_labels,
    test_probs,
    test_paths,
    cfg: EvaluateConfig,
    n_val: int = 0,
    operating: list[OperatingThreshold] | None = None,
    card: ModelCard | None = None,
    raw_probs=None,
) -> EvalResult:
    """Score test probabilities at ``threshold`` (the card's, chosen on validation), at 0.5 and at the
    ``operating`` points' thresholds (also chosen on validation). With ``card`` and ``raw_probs`` (the
    probabilities before its temperature), ECE and Brier before and after it (``calibration``) and, when
    the card has a refer band, coverage and error among decided (``refer``). Pure."""
    test_labels = np.asarray(test_labels).astype(int)
    if len(test_labels) == 0:
        raise ValueError("the test split is empty: nothing to evaluate (check the split stage's test_fraction)")
    report = evaluate_predictions(
        test_labels,
        test_probs,
        threshold,
        default_threshold=0.5,
        n_resamples=cfg.n_resamples,
        seed=cfg.seed,
        confidence=cfg.confidence,
    )
    report = {
        "model": model_name,
        "threshold": threshold,
        "threshold_method": threshold_method,
        "n_val": int(n_val),
        **report,
        "operating_points": score_operating_points(test_labels, test_probs, operating or [], cfg),
    }
    if card is not None and raw_probs is not None:
        report["calibration"] = calibration_report(test_labels, raw_probs, card.temperature)
    if card is not None and card.refer_band is not None:
        report["refer"] = {
            **refer_report(test_labels, test_probs, threshold, card.refer_band, cfg),
            **{k: card.refer[k] for k in REFER_CARD_KEYS if k in card.refer},
        }
    elif card is not None and card.refer:  # no band: why not (validation too small for the target), nothing scored
        report["refer"] = dict(card.refer)
    predicted = (np.asarray(test_probs) >= threshold).astype(int)
    tables = {
        "predictions": predictions_table(test_paths, test_labels, test_probs, threshold),
        "confusion": confusion_table(test_labels, predicted),
        **curve_tables(test_labels, test_probs),
    }
    return EvalResult(
        model=model_name,
        threshold=threshold,
        threshold_method=threshold_method,
        report=report,
        test_labels=test_labels,
        test_probs=np.asarray(test_probs, dtype=float),
        tables=tables,
    )


def evaluate_checkpoint(
    model: torch.nn.Module,
    card: ModelCard,
    *,
    test: tuple,
    cfg: EvaluateConfig,
    device: str | torch.device | None = None,
    n_val: int = 0,
    operating: list[OperatingThreshold] | None = None,
    name: str | None = None,
) -> EvalResult:
    """Predict ``test`` = (images, labels, paths) once, with the card's transform and temperature, and score it.
    ``name``: the candidate's, as its figures and reports show it (``resnet_small-tuned``); default the card's."""
    test_images, test_labels, test_paths = test
    raw = card_probabilities(model, card, test_images, cfg, device, calibrated=False)
    result = evaluate_probabilities(
        name or card.name,
        card.threshold,
        card.threshold_method,
        test_labels,
        card.calibrate(raw),
        test_paths,
        cfg,
        n_val=n_val,
        operating=operating,
        card=card,
        raw_probs=raw,
    )
    result.raw_probs, result.temperature = np.asarray(raw, dtype=float), card.temperature
    return result


def card_probabilities(
    model: torch.nn.Module, card: ModelCard, images, cfg: EvaluateConfig, device, calibrated: bool = True
) -> np.ndarray:
    """P(pneumonia) of uint8 ``images`` through the card's transform, and its temperature unless not ``calibrated``."""
    raw = predict_probabilities(
        model,
        images,
        mean=card.mean,
        std=card.std,
        image_size=card.image_size,
        device=device,
        batch_size=cfg.batch_size,
    )
    return card.calibrate(raw) if calibrated else raw


def operating_point(result: EvalResult) -> tuple[float, float]:
    """(false positive rate, true positive rate) at the result's threshold."""
    at = result.report["at_val_threshold"]
    return 1 - at["specificity"]["value"], at["sensitivity"]["value"]


def shift_panel(internal: EvalResult, external: dict[str, EvalResult]) -> tuple:
    """One panel of :func:`cxr.compare_figures.shift_roc_figure`: the internal test's curve first, then each set's."""
    curves = {}
    for label, r in (("internal test", internal), *external.items()):
        roc = r.tables["roc"]
        auc = r.report["at_val_threshold"]["roc_auc"]["value"]
        curves[f"{label} (n={r.report['n']})"] = (roc["fpr"], roc["tpr"], auc, operating_point(r))
    return internal.threshold, curves


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def gallery_indices(labels, probs, threshold: float, per_outcome: int) -> np.ndarray:
    """The most confident examples of each outcome: TP/TN the clearest successes, FP/FN the worst mistakes."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    pred = probs >= threshold
    chosen = []
    for mask, key in (
        (labels.astype(bool) & pred, -probs),  # TP: highest P(pneumonia) first
        (~labels.astype(bool) & ~pred, probs),  # TN: lowest first
        (~labels.astype(bool) & pred, -probs),  # FP: confidently wrong first
        (labels.astype(bool) & ~pred, probs),
    ):  # FN: confidently wrong first
        idx = np.flatnonzero(mask)
        chosen.extend(idx[np.argsort(key[idx], kind="stable")][:per_outcome].tolist())
    return np.asarray(chosen, dtype=int)


def model_inputs(images_uint8, card: ModelCard, device: str | torch.device = "cpu") -> torch.Tensor:
    """The evaluation transform of ``predict_probabilities`` as one normalised batch (for Grad-CAM)."""
    x = torch.from_numpy(np.array(images_uint8, dtype=np.uint8)).unsqueeze(1).to(device)  # writable copy of a memmap
    return Normalize(card.mean, card.std)(eval_resize(x, card.image_size))


def augmentation_examples(images_uint8, card: ModelCard, draws: int, seed: int) -> np.ndarray:
    """(N, draws, s, s) float [0, 1]: the training augmentation of the checkpoint's own parameters."""
    aug = BatchAugment(card.augment_config(), card.image_size)
    x = torch.from_numpy(np.array(images_uint8, dtype=np.uint8)).unsqueeze(1)  # a writable copy (memmaps are read-only)
    x = x.repeat_interleave(draws, dim=0)
    out = aug(x, torch.Generator().manual_seed(seed))
    return out.reshape(len(images_uint8), draws, *out.shape[-2:]).numpy()


def evaluation_figures(
    result: EvalResult,
    model: torch.nn.Module | None,
    card: ModelCard,
    *,
    test_images,
    val_images=None,
    cfg: EvaluateConfig | None = None,
    device: str | torch.device = "cpu",
    external: dict[str, EvalResult] | None = None,
) -> dict[str, Figure]:
    """name -> Figure: confusion, roc, pr, calibration, and where inputs allow roc_external (the internal and
    each ``external`` set's ROC), augmentation (needs ``val_images``) and gallery (Grad-CAM overlays when
    ``model`` is given and cfg.gradcam). The training curves: the stage's, from the per-epoch CSV."""
    cfg = cfg or EvaluateConfig()
    name = result.model
    figs = _test_figures(result, external)
    if val_images is not None and len(val_images):
        n = min(cfg.augment_examples, len(val_images))
        originals = np.asarray(val_images[:n])
        figs["augmentation"] = plots.augmentation_figure(
            originals,
            augmentation_examples(originals, card, cfg.augment_draws, cfg.seed),
            title=f"{name}: original vs augmented (training transforms, validation images)",
        )
    gallery = _gallery(result, model, card, test_images, cfg, device)
    if gallery is not None:
        figs["gallery"] = gallery
    return figs


def _test_figures(result: EvalResult, external: dict[str, EvalResult] | None) -> dict[str, Figure]:
    """The test split's confusion matrix, ROC (and beside each external set's), PR and reliability figures."""
    name = result.model
    y = result.test_labels
    at = result.report["at_val_threshold"]
    figs = {
        "confusion": plots.confusion_matrix_figure(
            y, result.test_predicted, title=f"{name}: test confusion matrix at threshold {result.threshold:.3f}"
        )
    }
    roc = result.tables["roc"]
    figs["roc"] = plots.roc_figure(
        roc["fpr"],
        roc["tpr"],
        at["roc_auc"]["value"],
        label=name,
        operating_point=operating_point(result),
        title=f"{name}: ROC curve (test)",
        targets=[
            (f"{p['metric']} {p['target']:.0%} on validation", 1 - p["specificity"]["value"], p["sensitivity"]["value"])
            for p in result.report.get("operating_points") or []
            if p.get("threshold") is not None  # a point validation could not support has none to mark
        ],
    )
    if external:
        figs["roc_external"] = shift_roc_figure({name: shift_panel(result, external)})
    pr = result.tables["pr"]
    figs["pr"] = plots.pr_figure(
        pr["recall"],
        pr["precision"],
        at["pr_auc"]["value"],
        prevalence=float(np.mean(y)),
        label=name,
        title=f"{name}: precision-recall curve (test)",
    )
    figs["calibration"] = reliability_figure(
        y,
        result.test_probs if result.raw_probs is None else result.raw_probs,
        result.test_probs,
        temperature=result.temperature,
        label=name,
        title=f"{name}: reliability diagram (test)",
    )
    return figs


def _gallery(result: EvalResult, model, card: ModelCard, test_images, cfg: EvaluateConfig, device) -> Figure | None:
    """True/false positives and negatives of the test split, with Grad-CAM overlays when a model is given."""
    name, y, p = result.model, result.test_labels, result.test_probs
    idx = gallery_indices(y, p, result.threshold, cfg.gallery_per_outcome)
    if not len(idx):
        return None
    images = np.asarray(test_images[np.sort(idx)])[np.argsort(np.argsort(idx))]  # sorted read from a memmap
    from cxr.explain import gallery_figure, grad_cam, is_flat, overlay

    overlays = None
    if model is not None and cfg.gradcam:  # a flat map (None) is marked "no localisation", not washed blue
        heat = grad_cam(model, card.name, model_inputs(images, card, device))  # the architecture's layer
        overlays = [None if is_flat(h) else overlay(img, h) for img, h in zip(images, heat)]
    return gallery_figure(
        images,
        y[idx],
        p[idx],
        result.test_predicted[idx],
        overlays,
        title=f"{name}: good and bad classifications (test)",
        threshold=result.threshold,
    )
