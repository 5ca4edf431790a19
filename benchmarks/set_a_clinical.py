"""What a clinician gets from a recipe on set A, over seeds: calibration, operating points, the refer band.

    PYTHONPATH=src python benchmarks/external_recipe.py cpu --seeds 1 2 3   # trains, saves the predictions
    PYTHONPATH=src python benchmarks/set_a_clinical.py cpu --seeds 1 2 3    # then this, in seconds
    PYTHONPATH=src python benchmarks/set_a_clinical.py cpu --seeds 1 2 3 --rule edge   # the former rules

Reads each run's saved validation and set-A probabilities (``--work/<recipe>@seed<N>.npz``, written by
external_recipe.py, raw: before any temperature) and makes on validation only the choices ``train`` makes
with the recipe's params, through the pipeline's own :class:`cxr.policy.ValidationPolicy`: the temperature
(``train.calibrate``), the threshold (``evaluate.threshold``), the operating points
(``evaluate.operating_points``) and the refer band (``evaluate.refer.target_error``), both at the one-sided
level ``evaluate.confidence``. ``--rule edge`` replays the rules before it instead, on the same calibrated
probabilities: each operating point at the far edge of the validation range meeting its target, the band
at split-conformal ranks that hold in expectation only. Set A only scores them: ECE and Brier before and
after the temperature, the sensitivity and specificity each operating point reaches there, and the band's
coverage and error among decided. Prints one row per seed and the mean +- sd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cxr.abstention import choose_refer_band, selective
from cxr.calibration import apply_temperature
from cxr.config import EvaluateConfig, load_params, section
from cxr.evaluation.operating import choose_thresholds, score_operating_points
from cxr.evaluation.selective import calibration_report
from cxr.policy import ValidationPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_recipe import RECIPES, REPO_ROOT, apply_overrides  # noqa: E402

RULES = ("policy", "edge")  # the pipeline's choices; the former ones (no margin for the validation sample)


def clinical_row(saved, policy: ValidationPolicy, ev: EvaluateConfig, rule: str = "policy") -> dict[str, float]:
    """One run's choices on validation (train's, through ``policy``), scored on set A."""
    y_val, p_val, y_a, p_a = (saved[k] for k in ("val_labels", "val_probs", "a_labels", "a_probs"))
    choices = policy.decide(y_val, p_val)
    val, t = choices.probs, choices.temperature
    points, refer = choices.operating_points, choices.refer
    if rule == "edge":  # the same temperature and threshold; the points and the band without the sample's margin
        points = choose_thresholds(y_val, val, policy.operating_points, confidence=None)
        refer = choose_refer_band(y_val, val, choices.threshold, policy.refer_target or 0.05, confidence=None)
    a = apply_temperature(p_a, t)
    cal = calibration_report(y_a, p_a, t)
    row = {
        "temperature": t,
        "ece_before": cal["uncalibrated"]["ece"],
        "ece_after": cal["calibrated"]["ece"],
        "brier_before": cal["uncalibrated"]["brier"],
        "brier_after": cal["calibrated"]["brier"],
    }
    for point in score_operating_points(y_a, a, points, ev):
        key = f"{point['metric'][:4]}{round(100 * point['target'])}"
        row[f"{key}_sens"] = point["sensitivity"]["value"] if point["threshold"] is not None else float("nan")
        row[f"{key}_spec"] = point["specificity"]["value"] if point["threshold"] is not None else float("nan")
    if "low" in refer:
        s = selective(y_a, a, choices.threshold, (refer["low"], refer["high"]))
        row |= {"val_coverage": refer["val_coverage"], "coverage": s["coverage"], "error": s["error_among_decided"]}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="cpu", help=f"one of: {', '.join(RECIPES)}")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds external_recipe.py ran")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxr-external-recipe"), help="its --work folder")
    ap.add_argument("--rule", choices=RULES, default="policy", help="policy: the pipeline's; edge: the former rules")
    args = ap.parse_args(argv)
    if args.recipe not in RECIPES:
        ap.error(f"unknown recipe {args.recipe!r}; known: {list(RECIPES)}")
    params = apply_overrides(load_params(REPO_ROOT / "params.yaml"), RECIPES[args.recipe][1])
    policy, ev = ValidationPolicy.from_params(params), section(params, "evaluate", EvaluateConfig)
    rows = {}
    for seed in args.seeds:
        path = args.work / f"{args.recipe}@seed{seed}.npz"
        if not path.is_file():
            ap.error(f"{path} is missing: run external_recipe.py {args.recipe} --seeds {seed} first")
        rows[f"seed {seed}"] = clinical_row(np.load(path), policy, ev, args.rule)
    keys = list(next(iter(rows.values())))
    print(
        f"{args.recipe} ({args.rule}): calibrate={policy.calibrate}, threshold={policy.threshold}, refer target "
        f"{policy.refer_target}, confidence {policy.confidence if args.rule == 'policy' else 'none'}"
    )
    print(f"{'':>10} " + " ".join(f"{k:>13}" for k in keys))
    for name, row in rows.items():
        print(f"{name:>10} " + " ".join(f"{row[k]:>13.3f}" for k in keys))
    if len(rows) > 1:
        values = np.array([[row[k] for k in keys] for row in rows.values()])
        cells = (f"{m:.3f}+-{s:.3f}" for m, s in zip(values.mean(0), values.std(0, ddof=1)))
        print(f"{'mean+-sd':>10} " + " ".join(f"{c:>13}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
