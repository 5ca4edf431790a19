"""Stage plots: the data of dvc.yaml's charts in long form, every candidate in one file per chart.

    python src/plots.py --params params.yaml --history plots/history --eval plots/eval \
        --train-metrics metrics/train --sweep metrics/sweep.json --out plots/models

(normally via ``dvc repro plots``; ``dvc plots show`` / ``dvc plots diff`` draw them). Reads ``models`` (the
model list) and ``compare.select_metric`` from params.yaml. The candidates are the models of the list and,
when the sweep ran, its ``<model>-tuned``; the one compare selects (the same rule, on the same validation
metrics) is marked ``selected``. Writes --out/{history,confusion,roc,pr,calibration}.csv
(cxr.plot_data: model, selected, color, then the candidate's own columns).
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import json
from pathlib import Path

from cxr.candidates import tuned_name
from cxr.config import CompareConfig, ConfigError, EvaluateConfig, load_params, section
from cxr.evaluation.selection import read_validation, select_candidate
from cxr.files import write_csv
from cxr.plot_data import read_long_form


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--history", default="plots/history", help="folder of <model>.csv (per epoch)")
    p.add_argument("--eval", default="plots/eval", help="folder of <model>/{confusion,roc,pr,calibration}.csv")
    p.add_argument("--train-metrics", default="metrics/train", help="folder of <model>.json (validation)")
    p.add_argument("--sweep", default=None, help="metrics/sweep.json: its model's <model>-tuned is a candidate")
    p.add_argument("--predictions", default=None, help="evaluate's eval/ folder: validation predictions, the tie test")
    p.add_argument("--out", required=True, help="folder of the long-form CSVs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    params = load_params(args.params)
    cfg: CompareConfig = section(params, "compare", CompareConfig)
    candidates = list(params.get("models") or {})
    sweep = json.loads(Path(args.sweep).read_text()) if args.sweep and Path(args.sweep).is_file() else {}
    if sweep.get("model"):
        candidates.append(tuned_name(sweep["model"]))
    validation = {
        m: json.loads(path.read_text())
        for m in candidates
        if (path := Path(args.train_metrics) / f"{m}.json").is_file() and (Path(args.eval) / m).is_dir()
    }
    if not validation:
        raise ConfigError(f"no candidate of {candidates} has {args.train_metrics}/<m>.json and {args.eval}/<m>/")
    ev: EvaluateConfig = section(params, "evaluate", EvaluateConfig)
    selected = select_candidate(  # compare's choice, made the same way (cxr.evaluation.selection)
        validation,
        cfg.select_metric,
        read_validation(args.predictions, list(validation)) if args.predictions else None,
        n_resamples=ev.n_resamples,
        seed=ev.seed,
        confidence=ev.confidence,
    ).selected
    tables = read_long_form(args.history, args.eval, list(validation), selected)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.csv"):
        stale.unlink()
    for name, table in tables.items():
        write_csv(table, out / f"{name}.csv")
    print(f"[plots] {len(validation)} candidate(s), {selected} selected: {', '.join(sorted(tables))} in {out}")
    return 0


if __name__ == "__main__":
    run_stage("plots", main, (ConfigError,))
