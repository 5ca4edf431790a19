"""What a clinician gets from a recipe on set A, over seeds: calibration, operating points, the refer band.

    PYTHONPATH=src python benchmarks/external_recipe.py cpu --seeds 1 2 3   # trains, saves the predictions
    PYTHONPATH=src python benchmarks/set_a_clinical.py cpu --seeds 1 2 3    # then this, in seconds

Reads each run's saved validation and set-A probabilities (``--work/<recipe>@seed<N>.npz``, written by
external_recipe.py) and makes, on validation only, the choices ``train`` and ``evaluate`` make with the
recipe's params: the temperature (``train.calibrate``), the threshold (``evaluate.threshold``), the
operating points (``evaluate.operating_points``) and the refer band (``evaluate.refer.target_error``),
with the pipeline's own functions. Set A only scores them: ECE and Brier before and after the
temperature, the sensitivity and specificity each operating point reaches there, and the band's
coverage and error among decided. Prints one row per seed and the mean +- sd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cxr.abstention import selective
from cxr.calibration import apply_temperature
from cxr.config import EvaluateConfig, TrainConfig, load_params, section
from cxr.evaluation.operating import choose_thresholds, score_operating_points
from cxr.evaluation.selective import calibration_report
from cxr.training.fit import _Choices  # what fit chooses on validation, not re-implemented here

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external_recipe import RECIPES, REPO_ROOT, apply_overrides  # noqa: E402


def clinical_row(saved, train: TrainConfig, ev: EvaluateConfig) -> dict[str, float]:
    """One run's choices on validation, scored on set A."""
    y_val, p_val, y_a, p_a = (saved[k] for k in ("val_labels", "val_probs", "a_labels", "a_probs"))
    # The choices fit makes once the epoch is kept (train.calibrate, evaluate.threshold, the refer band).
    choices = _Choices(ev.threshold, ev.fixed_threshold, str(train.calibrate).lower(), ev.refer.target_error)
    val, threshold, calibration, band = choices.make(y_val, p_val)
    t = calibration["temperature"]
    a = apply_temperature(p_a, t)
    cal = calibration_report(y_a, p_a, t)
    row = {
        "temperature": t,
        "ece_before": cal["uncalibrated"]["ece"],
        "ece_after": cal["calibrated"]["ece"],
        "brier_before": cal["uncalibrated"]["brier"],
        "brier_after": cal["calibrated"]["brier"],
    }
    for point in score_operating_points(y_a, a, choose_thresholds(y_val, val, ev.operating_points), ev):
        key = f"{point['metric'][:4]}{round(100 * point['target'])}"
        row[f"{key}_sens"] = point["sensitivity"]["value"]
        row[f"{key}_spec"] = point["specificity"]["value"]
    if band:
        s = selective(y_a, a, threshold, (band["low"], band["high"]))
        row |= {"val_coverage": band["val_coverage"], "coverage": s["coverage"], "error": s["error_among_decided"]}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default="cpu", help=f"one of: {', '.join(RECIPES)}")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds external_recipe.py ran")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxr-external-recipe"), help="its --work folder")
    args = ap.parse_args(argv)
    if args.recipe not in RECIPES:
        ap.error(f"unknown recipe {args.recipe!r}; known: {list(RECIPES)}")
    params = apply_overrides(load_params(REPO_ROOT / "params.yaml"), RECIPES[args.recipe][1])
    train, ev = section(params, "train", TrainConfig), section(params, "evaluate", EvaluateConfig)
    rows = {}
    for seed in args.seeds:
        path = args.work / f"{args.recipe}@seed{seed}.npz"
        if not path.is_file():
            ap.error(f"{path} is missing: run external_recipe.py {args.recipe} --seeds {seed} first")
        rows[f"seed {seed}"] = clinical_row(np.load(path), train, ev)
    keys = list(next(iter(rows.values())))
    print(f"{args.recipe}: calibrate={train.calibrate}, threshold={ev.threshold}, refer target {ev.refer.target_error}")
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
